"""The whole lifecycle as one flow: build dataset -> collect feedback -> SFT -> DPO -> evaluate.

It takes what the team has. SFT runs first when it trains on the team's own chats or pairs
(feedback is then sampled from the SFT model, on-policy for DPO), and after feedback when it
trains on the judged candidates or a teacher's answers (``dpo_core.train.config.sft_sources``).
Feedback runs when there are prompts to answer; DPO trains on the collected pairs and the team's.

Run it on the embedded default with ``python -m flows.lifecycle`` (or ``dpo-pipeline lifecycle``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow

from dpo_core.common.models import EMBEDDED_DEFAULT
from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.evaluate.heldout import load_prompts
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.prompts import check_judge
from dpo_core.train.config import DPOConfig, SFTConfig, sft_needs_feedback, sft_sources
from flows.presets import CPU_DEMO
from tasks.build_dataset import build_dataset_task, source_digest
from tasks.dpo import dpo_task
from tasks.evaluate import evaluate_task
from tasks.feedback import collect_feedback_task
from tasks.plumbing.champion import fetch_champion_task
from tasks.plumbing.results import EvalReport, PromotionDecision
from tasks.plumbing.tracking import flow_parent_run
from tasks.prepare_model import prepare_model_task
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
    chat_template: str | None = None,
    stage_timeout_s: float | None = None,
    api_key_secret: str | None = None,
) -> tuple[EvalReport, PromotionDecision]:
    """Build dataset -> collect feedback and SFT (in the order the data asks) -> DPO -> evaluate
    (with the registry's champion, if any) -> promote the DPO model only if it wins.

    Args:
        model: The base model: a local folder, a hub id, or the embedded SmolLM2-135M-Instruct.
        data: The team's prompts, SFT chats and preference pairs, and how they are cleaned and split.
        feedback: Candidate sampling, the judge and binarization.
        sft: Supervised fine-tuning on the team's chats or pairs, a teacher's answers or the best candidates.
        dpo: Direct preference optimisation on the collected and the team's pairs, from the SFT model.
        evaluation: Held-out evaluation of base, SFT, DPO and the champion.
        gate: When the DPO model replaces the champion.
        chat_template: For a base model without one: chatml, zephyr or a Jinja file (special tokens added).
        stage_timeout_s: Kill a stage's process group after this many seconds.
        api_key_secret: A Prefect Secret block holding the API key of OpenAI-compatible endpoints.
    """
    params = {"model": model, "data": asdict(data), "feedback": asdict(feedback), "sft": asdict(sft),
              "dpo": asdict(dpo), "evaluation": asdict(evaluation), "gate": asdict(gate), "chat_template": chat_template}
    with flow_parent_run(params) as parent:
        model = prepare_model_task(model, chat_template)
        dataset = build_dataset_task(data, source_digest(data), parent)
        has_prompts = dataset.counts["train"] > 0
        if not has_prompts and dataset.pairs_path is None:
            raise ValueError("nothing to train DPO on: give prompts to collect feedback on (data.source) or the "
                             "team's preference pairs (data.pairs_source)")
        # what would fail in a later stage fails now, before any training: the judges can score the prompts
        load_prompts(evaluation, Path(dataset.eval_path))
        if has_prompts:
            check_judge(feedback.judge, Path(dataset.train_path))
        sources = sft_sources(sft, dataset.sft_path is not None, dataset.pairs_path is not None)
        if sft_needs_feedback(sources):  # SFT reads the candidates: sample them from the base model first
            pairs = collect_feedback_task(feedback, model, dataset, parent, stage_timeout_s, api_key_secret)
            sft_model = sft_task(sft, model, dataset, pairs, parent, stage_timeout_s)
        else:  # SFT on the team's data first, then sample from the SFT model: pairs on the policy DPO starts from
            sft_model = sft_task(sft, model, dataset, None, parent, stage_timeout_s)
            pairs = collect_feedback_task(feedback, sft_model.model_path, dataset, parent, stage_timeout_s,
                                          api_key_secret) if has_prompts else None
        dpo_model = dpo_task(dpo, sft_model, pairs, parent, stage_timeout_s, dataset)
        champion = fetch_champion_task(gate.registered_model)
        models = {"base": model, "sft": sft_model, "dpo": dpo_model} | ({"champion": champion} if champion else {})
        report = evaluate_task(evaluation, models, dataset, parent, stage_timeout_s, dpo.beta)
        decision = promote_task(gate, dpo_model, report, parent)
    return report, decision


if __name__ == "__main__":  # the same as `dpo-pipeline lifecycle`: --help lists every setting
    import sys

    from flows.cli import main

    main(["lifecycle", *sys.argv[1:]])
