"""Task: sample candidates from the policy, judge them and binarize into preference pairs."""

from __future__ import annotations

from dataclasses import asdict

import mlflow
import pandas as pd
from prefect import get_run_logger, task

from dpo_core.common.io import read_jsonl
from dpo_core.common.models import model_fingerprint, resolve_model
from dpo_core.feedback.config import FeedbackConfig
from tasks.plumbing.child import run_stage_in_child
from tasks.plumbing.progress import Progress
from tasks.plumbing.results import DatasetRef, FeedbackRef
from tasks.plumbing.stage import markdown_table, output_dir, publish, retry_transient, stage_cache
from tasks.plumbing.tracking import experiment_id, stage_run

STAGE, ENTRY = "collect-feedback", "dpo_core.feedback.stage"  # ENTRY's import closure is the code version in the cache key


@task(name=STAGE, cache_policy=stage_cache(ENTRY), persist_result=True, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_transient)
def collect_feedback_task(
    cfg: FeedbackConfig, model: str, data: DatasetRef, parent_run_id: str,
    timeout_s: float | None = None, api_key_secret: str | None = None,
) -> FeedbackRef:
    """``api_key_secret``: a Prefect Secret block holding the endpoint's API key; it reaches the
    stage as the ``cfg.client.api_key_env`` variable (else that variable is read as set)."""
    fingerprint = model_fingerprint(resolve_model(model))
    out = output_dir(STAGE, ENTRY, asdict(cfg), fingerprint, data.digest)
    params = asdict(cfg) | {"model": model, "model_fingerprint": fingerprint}
    with stage_run(STAGE, parent_run_id, params) as run_id:
        job = {"config": asdict(cfg), "inputs": {"model": model, "prompts_path": data.train_path}}
        with Progress(STAGE, "prompts") as progress:
            result = run_stage_in_child("feedback", job, out, get_run_logger().info, timeout_s, progress.update,
                                        _secret_env(cfg, api_key_secret))
        mlflow.log_metrics({f"feedback/{k}": float(v) for k, v in result["stats"].items()})
        set_aside = read_jsonl(out / "set_aside.jsonl")
        if set_aside:
            mlflow.log_table(pd.DataFrame(set_aside).astype(str), "set_aside.json")
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
        "chosen_model": pairs["chosen_model"],
        "rejected_model": pairs["rejected_model"],
        "chosen_rationale": pairs["chosen_rationale"],
        "rejected_rationale": pairs["rejected_rationale"],
        "judge": pairs["judge"],
    })


def _secret_env(cfg: FeedbackConfig, block: str | None) -> dict[str, str] | None:
    if block is None:
        return None
    from prefect.blocks.system import Secret

    return {cfg.client.api_key_env: Secret.load(block).get()}
