"""Collect AI feedback alone, on the prompts of an earlier build-dataset run (or a folder)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from dpo_core.common.models import EMBEDDED_DEFAULT
from dpo_core.feedback.config import FeedbackConfig
from flows.presets import CPU_DEMO
from tasks.feedback import collect_feedback_task
from tasks.plumbing.lineage import dataset_ref
from tasks.plumbing.results import FeedbackRef
from tasks.plumbing.tracking import flow_parent_run


@flow(name="collect-feedback")
def collect_feedback_flow(
    dataset: str,
    model: str = EMBEDDED_DEFAULT,
    feedback: FeedbackConfig = CPU_DEMO["feedback"],
    stage_timeout_s: float | None = None,
    api_key_secret: str | None = None,
) -> FeedbackRef:
    """Sample candidates, judge them and binarize them into preference pairs.

    Args:
        dataset: MLflow run id of a build-dataset (or lifecycle) run, or a folder with train.jsonl and eval.jsonl.
        model: The model whose answers become candidates (more generators in feedback.generators).
        feedback: Candidate sampling, the judge and binarization.
        stage_timeout_s: Kill the stage's process group after this many seconds.
        api_key_secret: A Prefect Secret block holding the API key of OpenAI-compatible endpoints.
    """
    with flow_parent_run({"dataset": dataset, "model": model, "feedback": asdict(feedback)}) as parent:
        return collect_feedback_task(feedback, model, dataset_ref(dataset), parent, stage_timeout_s, api_key_secret)


if __name__ == "__main__":  # the same as `dpo-pipeline collect-feedback`: --help lists every setting
    import sys

    from flows.cli import main

    main(["collect-feedback", *sys.argv[1:]])
