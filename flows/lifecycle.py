"""The whole lifecycle as one flow: build dataset -> collect feedback -> SFT -> DPO -> evaluate.

Run it on the embedded default with ``python -m flows.lifecycle``.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from dpo_core.common.models import EMBEDDED_DEFAULT
from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.train.config import DPOConfig, SFTConfig
from flows.presets import CPU_DEMO
from tasks.build_dataset import build_dataset_task, source_digest
from tasks.dpo import dpo_task
from tasks.evaluate import evaluate_task
from tasks.feedback import collect_feedback_task
from tasks.plumbing.champion import fetch_champion_task
from tasks.plumbing.results import EvalReport, PromotionDecision
from tasks.plumbing.tracking import flow_parent_run
from tasks.promote import promote_task
from tasks.sft import sft_task


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
    if any) -> promote the DPO model only if it wins.

    Args:
        model: The base model: a local folder, a hub id, or the embedded SmolLM2-135M-Instruct.
        data: Where the prompts come from and how they are cleaned and split.
        feedback: Candidate sampling, the judge and binarization.
        sft: Supervised fine-tuning on the best candidates.
        dpo: Direct preference optimisation on the pairs, from the SFT model.
        evaluation: Held-out evaluation of base, SFT, DPO and the champion.
        gate: When the DPO model replaces the champion.
        stage_timeout_s: Kill a stage's process group after this many seconds.
        api_key_secret: A Prefect Secret block holding the API key of OpenAI-compatible endpoints.
    """
    params = {"model": model, "data": asdict(data), "feedback": asdict(feedback), "sft": asdict(sft),
              "dpo": asdict(dpo), "evaluation": asdict(evaluation), "gate": asdict(gate)}
    with flow_parent_run(params) as parent:
        dataset = build_dataset_task(data, source_digest(data), parent)
        pairs = collect_feedback_task(feedback, model, dataset, parent, stage_timeout_s, api_key_secret)
        sft_model = sft_task(sft, model, dataset, pairs, parent, stage_timeout_s)
        dpo_model = dpo_task(dpo, sft_model, pairs, parent, stage_timeout_s)
        champion = fetch_champion_task(gate.registered_model)
        report = evaluate_task(evaluation, model, sft_model, dpo_model, champion, dataset, dpo.beta, parent,
                               stage_timeout_s)
        decision = promote_task(gate, dpo_model, report, parent)
    return report, decision


if __name__ == "__main__":
    from flows.report import print_report

    print_report(*lifecycle())
