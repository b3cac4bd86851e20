"""Start a stage from an earlier run's outputs: an MLflow run id or a local path.

A run id may name a stage run (build-dataset, collect-feedback, sft, dpo) or a lifecycle run, in
which case its latest finished child run of the needed stage is used. Outputs are read from the
run's MLflow artifacts, downloaded once under ``DPO_HOME/lineage``, so a run on a team tracking
server works from any machine that reaches it. A path is a folder the stage wrote (or files in
the same layout): ``train.jsonl`` + ``eval.jsonl``; ``candidates.jsonl`` + ``pairs.jsonl``; a
saved model folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task

from dpo_core.common.digest import digest_files
from dpo_core.common.models import model_fingerprint, resolve_model
from tasks.plumbing.results import DatasetRef, FeedbackRef, ModelRef
from tasks.plumbing.settings import home, tracking_uri

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@task(name="resolve-dataset")
def dataset_ref(source: str) -> DatasetRef:
    folder, run_id = _materialise(source, "build-dataset", "dataset")
    train, heldout = _need(folder, "train.jsonl"), _need(folder, "eval.jsonl")
    sft, pairs, transfer = (folder / "sft.jsonl", folder / "pairs.jsonl", folder / "transfer.jsonl")
    present = [p for p in (train, heldout, transfer, sft, pairs) if p.exists()]
    return DatasetRef(train_path=str(train), eval_path=str(heldout), digest=digest_files(present), run_id=run_id,
                      counts={}, sft_path=str(sft) if sft.exists() else None,
                      pairs_path=str(pairs) if pairs.exists() else None,
                      transfer_path=str(transfer) if transfer.exists() else None)


@task(name="resolve-feedback")
def feedback_ref(source: str) -> FeedbackRef:
    folder, run_id = _materialise(source, "collect-feedback", "feedback")
    candidates, pairs = _need(folder, "candidates.jsonl"), _need(folder, "pairs.jsonl")
    return FeedbackRef(candidates_path=str(candidates), pairs_path=str(pairs), digest=digest_files([pairs, candidates]),
                       run_id=run_id, stats={})


@task(name="resolve-model")
def model_ref(source: str, stage: str) -> ModelRef:
    """A trained model from a ``stage`` (sft or dpo) run, or any model reference (a folder, a hub
    id, the embedded default)."""
    if not _RUN_ID.match(source):
        path = resolve_model(source)
        return ModelRef(model_path=path, run_id="", model_uri="", digest=model_fingerprint(path))
    run = _stage_run(source, stage)
    model_uri = run.data.tags.get("model_uri")
    if not model_uri:
        raise ValueError(f"run {run.info.run_id} logged no model: is it a finished {stage} run?")
    dest = _download(run.info.run_id, model_uri=model_uri)
    model = next(dest.rglob("config.json")).parent
    pairs = _download(run.info.run_id, "eval_pairs.jsonl", missing_ok=True)
    return ModelRef(model_path=str(model), run_id=run.info.run_id, model_uri=model_uri,
                    digest=digest_files(sorted(model.glob("*.safetensors"))),
                    eval_pairs_path=str(pairs) if pairs else None)


def _materialise(source: str, stage: str, artifact_dir: str) -> tuple[Path, str]:
    if not _RUN_ID.match(source):
        return Path(source), ""
    run = _stage_run(source, stage)
    return _download(run.info.run_id, artifact_dir), run.info.run_id


def _stage_run(run_id: str, stage: str):
    client = MlflowClient(tracking_uri())
    run = client.get_run(run_id)
    if run.data.tags.get("stage") == stage:
        return run
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}' and tags.stage = "
                                  f"'{stage}' and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                  max_results=1)
    if not children:
        raise ValueError(f"run {run_id} is neither a {stage} run nor a lifecycle run with a finished {stage} stage "
                         "(a stage served from Prefect's cache logs no run: give that stage's own run id)")
    return children[0]


def _download(run_id: str, artifact_path: str | None = None, model_uri: str | None = None,
              missing_ok: bool = False) -> Path | None:
    dest = home() / "lineage" / run_id / (artifact_path or "model")
    if not dest.exists():
        mlflow.set_tracking_uri(tracking_uri())
        try:
            if model_uri:
                mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest))
            else:
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest.parent))
        except Exception:
            if missing_ok:
                return None
            raise
    return dest


def _need(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: give a run id or a folder with {name}")
    return path
