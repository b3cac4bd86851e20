"""Task: supervised fine-tuning on the best candidates, in a child process."""

from __future__ import annotations

from dataclasses import asdict

import mlflow
from prefect import get_run_logger, task

from dpo_core.digest import code_version
from dpo_core.models import model_fingerprint, resolve_model
from dpo_core.sft import SFTConfig
from tasks.child import run_stage_in_child
from tasks.code_version import CodeVersion
from tasks.progress import Progress
from tasks.results import DatasetRef, FeedbackRef, ModelRef
from tasks.stage import STAGE_CACHE, markdown_table, output_dir, publish
from tasks.tracking import experiment_id, log_step_metrics, log_trained_model, stage_run

CODE = (
    "dpo_core.sft",
    "dpo_core.training",
    "dpo_core.optim",
    "dpo_core.distributed",
    "dpo_core.batching",
    "dpo_core.chat",
    "dpo_core.models",
)  # what this stage runs: part of its cache key
STAGE = "sft"


@task(name=STAGE, cache_policy=STAGE_CACHE + CodeVersion(modules=CODE), persist_result=True, retries=1, retry_delay_seconds=10)
def sft_task(
    cfg: SFTConfig, model: str, data: DatasetRef, feedback: FeedbackRef, parent_run_id: str,
    timeout_s: float | None = None,
) -> ModelRef:
    fingerprint = model_fingerprint(resolve_model(model))
    out = output_dir(STAGE, asdict(cfg), fingerprint, data.digest, feedback.digest, code_version(*CODE))
    with stage_run(STAGE, parent_run_id, asdict(cfg) | {"model": model, "model_fingerprint": fingerprint}) as run_id:
        job = {"config": asdict(cfg), "inputs": {"model": model, "prompts_path": data.train_path,
                                                  "candidates_path": feedback.candidates_path}}
        with Progress(STAGE, "optimizer steps") as progress:
            result = run_stage_in_child("sft", job, out, get_run_logger().info, timeout_s, progress.update,
                                        processes=cfg.num_processes)
        log_step_metrics(out / "metrics.jsonl")
        mlflow.log_metric("train_examples", result["metrics"]["train_examples"])
        model_uri = log_trained_model(result["model_path"], result["adapter_path"])
        publish(STAGE, run_id, experiment_id(), markdown_table(result["metrics"]) + f"\n\nModel: `{model_uri}`")
    return ModelRef(model_path=result["model_path"], digest=result["digest"], run_id=run_id, model_uri=model_uri)
