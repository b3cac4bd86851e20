"""Task: sample candidates from the policy, judge them and binarize into preference pairs."""

from __future__ import annotations

from dataclasses import asdict

import mlflow
import pandas as pd
from prefect import get_run_logger, task

from dpo_core.data.io import read_jsonl
from dpo_core.digest import code_version
from dpo_core.feedback import FeedbackConfig
from dpo_core.models import model_fingerprint, resolve_model
from tasks.child import run_stage_in_child
from tasks.code_version import CodeVersion
from tasks.progress import Progress
from tasks.results import DatasetRef, FeedbackRef
from tasks.stage import STAGE_CACHE, markdown_table, output_dir, publish
from tasks.tracking import experiment_id, stage_run

CODE = (
    "dpo_core.feedback",
    "dpo_core.generation",
    "dpo_core.judges.verifiable",
    "dpo_core.instructions.checkers",
    "dpo_core.chat",
    "dpo_core.models",
    "dpo_core.records",
)  # what this stage runs: part of its cache key
STAGE = "collect-feedback"


@task(name=STAGE, cache_policy=STAGE_CACHE + CodeVersion(modules=CODE), persist_result=True, retries=1, retry_delay_seconds=10)
def collect_feedback_task(
    cfg: FeedbackConfig, model: str, data: DatasetRef, parent_run_id: str,
    timeout_s: float | None = None,
) -> FeedbackRef:
    fingerprint = model_fingerprint(resolve_model(model))
    out = output_dir(STAGE, asdict(cfg), fingerprint, data.digest, code_version(*CODE))
    params = asdict(cfg) | {"model": model, "model_fingerprint": fingerprint}
    with stage_run(STAGE, parent_run_id, params) as run_id:
        job = {"config": asdict(cfg), "inputs": {"model": model, "prompts_path": data.train_path}}
        with Progress(STAGE, "prompts") as progress:
            result = run_stage_in_child("feedback", job, out, get_run_logger().info, timeout_s, progress.update)
        mlflow.log_metrics({f"feedback/{k}": float(v) for k, v in result["stats"].items()})
        pairs = pd.DataFrame(read_jsonl(result["pairs_path"]))
        if len(pairs):
            mlflow.log_input(mlflow.data.from_pandas(pairs, source=result["pairs_path"], name="preference-pairs",
                                                     digest=result["digest"]), context="train")
            mlflow.log_table(_readable(pairs), "pairs.json")
        mlflow.log_artifacts(str(out), "feedback")
        publish(STAGE, run_id, experiment_id(), markdown_table(result["stats"]))
    return FeedbackRef(candidates_path=result["candidates_path"], pairs_path=result["pairs_path"],
                       digest=result["digest"], run_id=run_id, stats=result["stats"])


def _readable(pairs: pd.DataFrame) -> pd.DataFrame:
    """One text column per side, for browsing in MLflow's table view."""
    return pd.DataFrame({
        "prompt_id": pairs["prompt_id"],
        "prompt": pairs["prompt"].map(lambda m: m[-1]["content"]),
        "chosen": pairs["chosen"].map(lambda m: m[0]["content"]),
        "rejected": pairs["rejected"].map(lambda m: m[0]["content"]),
        "score_chosen": pairs["score_chosen"],
        "score_rejected": pairs["score_rejected"],
    })
