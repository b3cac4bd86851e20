"""Supervised fine-tuning alone, on the candidates of an earlier feedback run (or a folder)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from dpo_core.common.models import EMBEDDED_DEFAULT
from dpo_core.train.config import SFTConfig
from flows.presets import CPU_DEMO
from tasks.plumbing.lineage import dataset_ref, feedback_ref
from tasks.plumbing.results import ModelRef
from tasks.plumbing.tracking import flow_parent_run
from tasks.sft import sft_task


@flow(name="sft")
def sft_flow(
    dataset: str,
    feedback: str,
    model: str = EMBEDDED_DEFAULT,
    sft: SFTConfig = CPU_DEMO["sft"],
    stage_timeout_s: float | None = None,
) -> ModelRef:
    """Fine-tune on the best candidate of each prompt.

    Args:
        dataset: MLflow run id of a build-dataset (or lifecycle) run, or a folder with train.jsonl and eval.jsonl.
        feedback: MLflow run id of a collect-feedback (or lifecycle) run, or a folder with candidates.jsonl and pairs.jsonl.
        model: The model to fine-tune: a local folder, a hub id, or the embedded default.
        sft: Supervised fine-tuning settings.
        stage_timeout_s: Kill the stage's process group after this many seconds.
    """
    with flow_parent_run({"dataset": dataset, "feedback": feedback, "model": model, "sft": asdict(sft)}) as parent:
        return sft_task(sft, model, dataset_ref(dataset), feedback_ref(feedback), parent, stage_timeout_s)


if __name__ == "__main__":  # the same as `dpo-pipeline sft`: --help lists every setting
    import sys

    from flows.cli import main

    main(["sft", *sys.argv[1:]])
