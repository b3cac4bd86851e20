"""The whole lifecycle as one flow: build dataset -> collect feedback -> SFT -> DPO -> evaluate.

Run it on the embedded default with ``python -m flows.lifecycle``.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.runtime import flow_run

from dpo_core.build_dataset import BuildConfig
from dpo_core.dpo.trainer import DPOConfig
from dpo_core.evaluate import EvalConfig
from dpo_core.feedback import FeedbackConfig
from dpo_core.gate import GateConfig
from dpo_core.models import EMBEDDED_DEFAULT
from dpo_core.sft import SFTConfig
from flows.presets import CPU_DEMO
from tasks.build_dataset import build_dataset_task, source_digest
from tasks.champion import fetch_champion_task
from tasks.dpo import dpo_task
from tasks.evaluate import evaluate_task
from tasks.feedback import collect_feedback_task
from tasks.promote import promote_task
from tasks.results import EvalReport, PromotionDecision
from tasks.sft import sft_task
from tasks.tracking import close_parent_run, open_parent_run


@flow(name="dpo-lifecycle")
def lifecycle(
    model: str = EMBEDDED_DEFAULT,
    data: BuildConfig = CPU_DEMO["data"],
    feedback: FeedbackConfig = CPU_DEMO["feedback"],
    sft: SFTConfig = CPU_DEMO["sft"],
    dpo: DPOConfig = CPU_DEMO["dpo"],
    evaluation: EvalConfig = CPU_DEMO["evaluation"],
    gate: GateConfig = CPU_DEMO["gate"],
    stage_timeout_s: float | None = None,
    api_key_secret: str | None = None,
) -> tuple[EvalReport, PromotionDecision]:
    """Build dataset -> collect feedback -> SFT -> DPO -> evaluate (with the registry's champion,
    if any) -> promote the DPO model only if it wins. ``model``: the base model, a local folder or
    hub id (default: the embedded SmolLM2-135M-Instruct). ``api_key_secret``: the name of a Prefect
    Secret block with the API key of the feedback stage's OpenAI-compatible endpoints."""
    params = {"model": model, "data": asdict(data), "feedback": asdict(feedback), "sft": asdict(sft),
              "dpo": asdict(dpo), "evaluation": asdict(evaluation), "gate": asdict(gate)}
    parent = open_parent_run(str(flow_run.get_id()), flow_run.get_name() or "lifecycle", params)
    try:
        dataset = build_dataset_task(data, source_digest(data), parent)
        pairs = collect_feedback_task(feedback, model, dataset, parent, stage_timeout_s, api_key_secret)
        sft_model = sft_task(sft, model, dataset, pairs, parent, stage_timeout_s)
        dpo_model = dpo_task(dpo, sft_model, pairs, parent, stage_timeout_s)
        champion = fetch_champion_task(gate.registered_model)
        report = evaluate_task(evaluation, model, sft_model, dpo_model, champion, dataset, dpo.beta, parent,
                               stage_timeout_s)
        decision = promote_task(gate, dpo_model, report, parent)
    except BaseException:
        close_parent_run(parent, "FAILED")
        raise
    close_parent_run(parent, "FINISHED")
    return report, decision


if __name__ == "__main__":
    from flows.report import print_report

    print_report(*lifecycle())
