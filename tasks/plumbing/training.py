"""The body SFT and DPO tasks share: train in a child process, track it, log the model."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import mlflow
from prefect import get_run_logger

from tasks.plumbing.child import run_stage_in_child
from tasks.plumbing.progress import Progress
from tasks.plumbing.results import ModelRef
from tasks.plumbing.stage import markdown_table, publish
from tasks.plumbing.tracking import experiment_id, log_step_metrics, log_trained_model, stage_run

# sizes a trainer reports (its per-step metrics come from metrics.jsonl): examples and pairs by source, truncations;
# and how the run went: the checkpoint step it resumed from (0: the start), the checkpoints it wrote and their cost
_COUNTS = ("train_examples", "train_pairs", "eval_pairs", "examples_", "truncated_", "resumed_from_step",
           "checkpoints_written", "checkpoint_seconds")


def train_in_child(stage: str, cfg, inputs: dict, out: Path, parent_run_id: str, params: dict,
                   timeout_s: float | None) -> ModelRef:
    """Run ``python -m dpo_core STAGE`` on ``inputs`` under an MLflow child run; log its per-step
    metrics, the trained model and (DPO) the pairs it held out."""
    with stage_run(stage, parent_run_id, params) as run_id:
        job = {"config": asdict(cfg), "inputs": inputs}
        with Progress(stage, "optimizer steps") as progress:
            result = run_stage_in_child(stage, job, out, get_run_logger().info, timeout_s, progress.update,
                                        processes=cfg.num_processes)
        log_step_metrics(out / "metrics.jsonl")
        mlflow.log_param("resolved_precision", result["precision"])  # what precision=auto became where it trained
        mlflow.log_metrics({k: v for k, v in result["metrics"].items() if k.startswith(_COUNTS)})
        model_uri = log_trained_model(result["model_path"], result["adapter_path"])
        eval_pairs = out / "eval_pairs.jsonl"
        if eval_pairs.exists():
            mlflow.log_artifact(str(eval_pairs))
        publish(stage, run_id, experiment_id(), markdown_table(result["metrics"]) + f"\n\nModel: `{model_uri}`")
    return ModelRef(model_path=result["model_path"], digest=result["digest"], run_id=run_id, model_uri=model_uri,
                    eval_pairs_path=str(eval_pairs) if eval_pairs.exists() else None)
