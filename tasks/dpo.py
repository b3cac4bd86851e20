"""Task: direct preference optimization of the SFT model, in a child process."""

from __future__ import annotations

from dataclasses import asdict

import mlflow
from prefect import get_run_logger, task

from dpo_core.digest import code_version
from dpo_core.dpo.trainer import DPOConfig
from tasks.child import run_stage_in_child
from tasks.code_version import CodeVersion
from tasks.progress import Progress
from tasks.results import FeedbackRef, ModelRef
from tasks.stage import STAGE_CACHE, markdown_table, output_dir, publish
from tasks.tracking import experiment_id, log_step_metrics, log_trained_model, stage_run

CODE = (
    "dpo_core.dpo.trainer",
    "dpo_core.dpo.losses",
    "dpo_core.training",
    "dpo_core.dpo.reference",
    "dpo_core.optim",
    "dpo_core.distributed",
    "dpo_core.batching",
    "dpo_core.chat",
    "dpo_core.models",
)  # what this stage runs: part of its cache key
STAGE = "dpo"


@task(name=STAGE, cache_policy=STAGE_CACHE + CodeVersion(modules=CODE), persist_result=True, retries=1, retry_delay_seconds=10)
def dpo_task(
    cfg: DPOConfig, policy: ModelRef, feedback: FeedbackRef, parent_run_id: str,
    timeout_s: float | None = None,
) -> ModelRef:
    out = output_dir(STAGE, asdict(cfg), policy.digest, feedback.digest, code_version(*CODE))
    with stage_run(STAGE, parent_run_id, asdict(cfg) | {"reference_model_uri": policy.model_uri}) as run_id:
        job = {"config": asdict(cfg), "inputs": {"model": policy.model_path, "pairs_path": feedback.pairs_path}}
        with Progress(STAGE, "optimizer steps") as progress:
            result = run_stage_in_child("dpo", job, out, get_run_logger().info, timeout_s, progress.update,
                                        processes=cfg.num_processes)
        log_step_metrics(out / "metrics.jsonl")
        mlflow.log_metric("train_pairs", result["metrics"]["train_pairs"])
        model_uri = log_trained_model(result["model_path"], result["adapter_path"])
        eval_pairs = out / "eval_pairs.jsonl"
        if eval_pairs.exists():
            mlflow.log_artifact(str(eval_pairs))
        publish(STAGE, run_id, experiment_id(), markdown_table(result["metrics"]) + f"\n\nModel: `{model_uri}`")
    return ModelRef(model_path=result["model_path"], digest=result["digest"], run_id=run_id, model_uri=model_uri,
                    eval_pairs_path=str(eval_pairs) if eval_pairs.exists() else None)
