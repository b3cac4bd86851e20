"""Evaluate alone: compare a base, an SFT and a DPO model from earlier runs and promote the DPO model
if it beats the champion (``evaluate``), or score one model on a prompts file (``evaluate-model``)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from dpo_core.common.models import EMBEDDED_DEFAULT
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from flows.presets import CPU_DEMO
from tasks.evaluate import evaluate_task, heldout_prompts_task
from tasks.plumbing.champion import fetch_champion_task
from tasks.plumbing.lineage import dataset_ref, model_ref
from tasks.plumbing.results import EvalReport, PromotionDecision
from tasks.plumbing.tracking import flow_parent_run
from tasks.prepare_model import prepare_model_task
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
        champion = fetch_champion_task(gate.registered_model)
        models = {"base": base_model, "sft": model_ref(sft, "sft"), "dpo": dpo_model} | (
            {"champion": champion} if champion else {})
        report = evaluate_task(evaluation, models, dataset_ref(dataset), parent, stage_timeout_s, dpo_beta)
        return report, promote_task(gate, dpo_model, report, parent)


@flow(name="evaluate-model")
def evaluate_model_flow(
    model: str,
    prompts: str,
    evaluation: EvalConfig = CPU_DEMO["evaluation"],
    chat_template: str | None = None,
    stage_timeout_s: float | None = None,
) -> EvalReport:
    """Score one model on a prompts file: it answers each prompt once; no comparison, no promotion.

    Args:
        model: The model: a local folder, a hub id, or the embedded default.
        prompts: A prompts file in any accepted prompt shape (JSONL, CSV, Parquet, a datasets folder).
        evaluation: What to measure: prompts with verifiable instructions are checked; others need
            evaluation.judge or evaluation.reward_model.
        chat_template: For a base model without one: chatml, zephyr or a Jinja file.
        stage_timeout_s: Kill the stage's process group after this many seconds.
    """
    params = {"model": model, "prompts": prompts, "evaluation": asdict(evaluation), "chat_template": chat_template}
    with flow_parent_run(params) as parent:
        model = prepare_model_task(model, chat_template)
        return evaluate_task(evaluation, {"model": model}, heldout_prompts_task(prompts), parent, stage_timeout_s)


if __name__ == "__main__":  # the same as `dpo-pipeline evaluate`: --help lists every setting
    import sys

    from flows.cli import main

    main(["evaluate", *sys.argv[1:]])
