"""Evaluate alone: compare a base, an SFT and a DPO model from earlier runs, and promote the DPO
model if it beats the champion."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from dpo_core.common.models import EMBEDDED_DEFAULT
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from flows.presets import CPU_DEMO
from tasks.evaluate import evaluate_task
from tasks.plumbing.champion import fetch_champion_task
from tasks.plumbing.lineage import dataset_ref, model_ref
from tasks.plumbing.results import EvalReport, PromotionDecision
from tasks.plumbing.tracking import flow_parent_run
from tasks.promote import promote_task


@flow(name="evaluate")
def evaluate_flow(
    dataset: str,
    sft: str,
    dpo: str,
    base_model: str = EMBEDDED_DEFAULT,
    dpo_beta: float = 0.1,
    evaluation: EvalConfig = CPU_DEMO["evaluation"],
    gate: GateConfig = CPU_DEMO["gate"],
    stage_timeout_s: float | None = None,
) -> tuple[EvalReport, PromotionDecision]:
    """Held-out evaluation of base, SFT, DPO and the champion, then the promotion gate.

    Args:
        dataset: MLflow run id of a build-dataset (or lifecycle) run, or a folder with train.jsonl and eval.jsonl.
        sft: MLflow run id of an sft (or lifecycle) run, or a model folder.
        dpo: MLflow run id of a dpo (or lifecycle) run, or a model folder.
        base_model: The base model: a local folder, a hub id, or the embedded default.
        dpo_beta: The beta DPO trained with (for implicit-reward preference accuracy).
        evaluation: What to measure.
        gate: When the DPO model replaces the champion.
        stage_timeout_s: Kill the stage's process group after this many seconds.
    """
    params = {"dataset": dataset, "sft": sft, "dpo": dpo, "base_model": base_model, "evaluation": asdict(evaluation),
              "gate": asdict(gate)}
    with flow_parent_run(params) as parent:
        dpo_model = model_ref(dpo, "dpo")
        report = evaluate_task(evaluation, base_model, model_ref(sft, "sft"), dpo_model,
                               fetch_champion_task(gate.registered_model), dataset_ref(dataset), dpo_beta, parent,
                               stage_timeout_s)
        return report, promote_task(gate, dpo_model, report, parent)
