"""MLflow for the pipeline: one parent run per flow run, one child run per stage.

The fluent API's active run is thread-local and Prefect may run tasks in worker threads, so every
stage opens its child run explicitly with ``parent_run_id``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect.exceptions import ExternalSignal
from prefect.runtime import flow_run

from tasks.plumbing.settings import home, tracking_uri

EXPERIMENT = "dpo-lifecycle"
FLOW_RUN_TAG = "prefect.flow_run_id"
FLOW_TAG = "prefect.flow"  # which flow a parent run belongs to: dpo-lifecycle, sft, evaluate-model, ...


def experiment_id(name: str = EXPERIMENT) -> str:
    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (home() / "mlartifacts").as_uri() if tracking_uri().startswith("sqlite") else None
    return mlflow.create_experiment(name, artifact_location=artifacts)


def open_parent_run(flow_run_id: str, run_name: str, params: dict, flow_name: str = "") -> str:
    """Create the parent run of a flow run, or reuse it when the flow run is retried."""
    exp = experiment_id()
    client = MlflowClient(tracking_uri())
    found = client.search_runs([exp], f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(exp, run_name=run_name, tags={FLOW_RUN_TAG: flow_run_id, FLOW_TAG: flow_name})
    for key, value in flatten(params).items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def close_parent_run(run_id: str, status: str) -> None:
    MlflowClient(tracking_uri()).set_terminated(run_id, status=status)


@contextmanager
def flow_parent_run(params: dict) -> Iterator[str]:
    """The MLflow parent run of the current Prefect flow run (reused when the flow run is retried),
    ended FINISHED, FAILED, or KILLED when the run is cancelled."""
    parent = open_parent_run(str(flow_run.get_id()), flow_run.get_name() or flow_run.get_flow_name(), params,
                             flow_run.get_flow_name())
    try:
        yield parent
    except BaseException as exc:
        close_parent_run(parent, ended_status(exc))
        raise
    close_parent_run(parent, "FINISHED")


def ended_status(exc: BaseException) -> str:
    """KILLED for a cancellation (Prefect's termination signal, Ctrl-C), FAILED otherwise."""
    return "KILLED" if isinstance(exc, (ExternalSignal, KeyboardInterrupt, SystemExit)) else "FAILED"


@contextmanager
def stage_run(stage: str, parent_run_id: str, params: dict) -> Iterator[str]:
    """Child run of ``parent_run_id``; ends FAILED on an exception, KILLED on cancellation."""
    mlflow.set_tracking_uri(tracking_uri())
    run = mlflow.start_run(experiment_id=experiment_id(), run_name=stage, parent_run_id=parent_run_id,
                           tags={"stage": stage})
    try:
        mlflow.log_params(flatten(params))
        yield run.info.run_id
    except BaseException as exc:
        mlflow.end_run(ended_status(exc))
        raise
    mlflow.end_run("FINISHED")


@contextmanager
def round_run(parent_run_id: str, round_no: int, params: dict) -> Iterator[str]:
    """One round of the iterative flow: a child run of the flow's parent, parent in turn of the
    round's stage runs; ended FINISHED, FAILED or KILLED as ``flow_parent_run`` is."""
    client = MlflowClient(tracking_uri())
    run = client.create_run(experiment_id(), run_name=f"round-{round_no}",
                            tags={"mlflow.parentRunId": parent_run_id, "stage": "round", "round": str(round_no)})
    for key, value in flatten(params).items():
        client.log_param(run.info.run_id, key, value)
    try:
        yield run.info.run_id
    except BaseException as exc:
        client.set_terminated(run.info.run_id, ended_status(exc))
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


def log_step_metrics(metrics_path: Path) -> None:
    """Log a trainer's ``metrics.jsonl`` (one line per optimizer step) as MLflow step metrics,
    under TRL's names (``loss``, ``rewards/margins``, ``eval_loss``...) so dashboards carry over."""
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri())
    run_id = mlflow.active_run().info.run_id
    batch = []
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line)
        step = row.pop("step")
        batch += [Metric(k, float(v), 0, step) for k, v in row.items()]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i : i + 1000])


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested config dicts as dotted MLflow params."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def log_trained_model(model_path: str, adapter_path: str | None) -> str:
    """Log the merged checkpoint as an MLflow model (by path: it is not loaded again) and the
    LoRA adapter beside it; return the model URI (``models:/m-...``)."""
    import transformers

    info = mlflow.transformers.log_model(
        transformers_model=model_path,
        name="model",
        task="text-generation",
        # explicit requirements: inferring them would load the model in a subprocess
        pip_requirements=[f"transformers=={transformers.__version__}", "torch", "safetensors"],
    )
    if adapter_path:
        mlflow.log_artifacts(adapter_path, "adapter")
    mlflow.set_tag("model_uri", info.model_uri)  # how a later flow finds this run's model (tasks.plumbing.lineage)
    return info.model_uri
