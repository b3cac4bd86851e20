"""DPO alone: re-run preference optimisation with new settings (a new beta, another loss) on
the SFT model and pairs of an earlier run."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from dpo_core.train.config import DPOConfig
from flows.presets import CPU_DEMO
from tasks.dpo import dpo_task
from tasks.plumbing.lineage import feedback_ref, model_ref
from tasks.plumbing.results import ModelRef
from tasks.plumbing.tracking import flow_parent_run


@flow(name="dpo")
def dpo_flow(
    model: str,
    feedback: str,
    dpo: DPOConfig = CPU_DEMO["dpo"],
    stage_timeout_s: float | None = None,
) -> ModelRef:
    """Train the policy on preference pairs; the starting model is also the reference.

    Args:
        model: MLflow run id of an sft (or lifecycle) run, or a model folder (or model reference).
        feedback: MLflow run id of a collect-feedback (or lifecycle) run, or a folder with candidates.jsonl and pairs.jsonl.
        dpo: Loss, beta, LoRA or full fine-tune, schedule.
        stage_timeout_s: Kill the stage's process group after this many seconds.
    """
    with flow_parent_run({"model": model, "feedback": feedback, "dpo": asdict(dpo)}) as parent:
        return dpo_task(dpo, model_ref(model, "sft"), feedback_ref(feedback), parent, stage_timeout_s)


if __name__ == "__main__":  # the same as `dpo-pipeline dpo`: --help lists every setting
    import sys

    from flows.cli import main

    main(["dpo", *sys.argv[1:]])
