"""MLflow for the pipeline: one parent run per flow run, one child run per stage.

The fluent API's active run is thread-local and Prefect may run tasks in worker threads, so every
stage opens its child run explicitly with ``parent_run_id``.

A process killed with ``kill -9`` cannot end its runs, so the parent run carries liveness marks (host,
pid and start time of the flow process, a heartbeat refreshed every ``HEARTBEAT_S``) and every run the
Prefect flow run id: ``tasks.plumbing.reconcile`` reads them to end the runs of flows that died.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import psutil
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from prefect import get_run_logger
from prefect.exceptions import ExternalSignal
from prefect.runtime import flow_run

from tasks.plumbing.settings import home, tracking_uri

EXPERIMENT = "dpo-lifecycle"
FLOW_RUN_TAG = "prefect.flow_run_id"
FLOW_TAG = "prefect.flow"  # which flow a parent run belongs to: dpo-lifecycle, sft, evaluate-model, ...
PARENT_TAG = "mlflow.parentRunId"
# liveness marks of a parent run: where its flow process runs, and when it last said so (epoch seconds)
HOST_TAG = "dpo.host"
PID_TAG = "dpo.pid"
PID_STARTED_TAG = "dpo.pid_started"  # the process's create time: a pid reused by another process does not match
HEARTBEAT_TAG = "dpo.heartbeat"
HEARTBEAT_S = 30.0  # rare writes: MLflow on SQLite takes one writer at a time

logger = logging.getLogger(__name__)


def experiment_id(name: str = EXPERIMENT) -> str:
    mlflow.set_tracking_uri(tracking_uri())
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (home() / "mlartifacts").as_uri() if tracking_uri().startswith("sqlite") else None
    return mlflow.create_experiment(name, artifact_location=artifacts)


def open_parent_run(flow_run_id: str, run_name: str, params: dict, flow_name: str = "") -> str:
    """Create the parent run of a flow run, or reuse it when the flow run is retried; either way it
    carries the liveness marks of this process."""
    exp = experiment_id()
    client = MlflowClient(tracking_uri())
    tagged = client.search_runs([exp], f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'")
    found = [run for run in tagged if PARENT_TAG not in run.data.tags]  # its stage and round runs name it too
    if found:
        run_id = found[0].info.run_id
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in liveness_tags().items()])
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(exp, run_name=run_name,
                            tags={FLOW_RUN_TAG: flow_run_id, FLOW_TAG: flow_name} | liveness_tags())
    for key, value in flatten(params).items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def liveness_tags() -> dict[str, str]:
    """Which process runs the flow (host, pid, start time), and a first heartbeat."""
    process = psutil.Process()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(process.pid), PID_STARTED_TAG: str(process.create_time()),
            HEARTBEAT_TAG: str(time.time())}


def close_parent_run(run_id: str, status: str) -> None:
    MlflowClient(tracking_uri()).set_terminated(run_id, status=status)


@contextmanager
def heartbeat(run_id: str) -> Iterator[None]:
    """Refresh the run's heartbeat tag every ``HEARTBEAT_S`` from a daemon thread while the context is open."""
    stop = threading.Event()

    def beat() -> None:
        client = MlflowClient(tracking_uri())
        while not stop.wait(HEARTBEAT_S):
            try:
                client.set_tag(run_id, HEARTBEAT_TAG, str(time.time()))
            except Exception as exc:  # a busy or unreachable store: the next beat tries again
                logger.warning("heartbeat of MLflow run %s not written: %r", run_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)  # a beat still writing after that lands on an ended run: harmless


@contextmanager
def flow_parent_run(params: dict) -> Iterator[str]:
    """The MLflow parent run of the current Prefect flow run (reused when the flow run is retried),
    ended FINISHED, FAILED, or KILLED when the run is cancelled; kept alive by a heartbeat.

    First it ends the runs that killed flows left RUNNING (``tasks.plumbing.reconcile``)."""
    flow_run_id = str(flow_run.get_id())
    reconcile_before_start(flow_run_id)
    parent = open_parent_run(flow_run_id, flow_run.get_name() or flow_run.get_flow_name(), params,
                             flow_run.get_flow_name())
    try:
        with heartbeat(parent):
            yield parent
    except BaseException as exc:
        close_parent_run(parent, ended_status(exc))
        raise
    close_parent_run(parent, "FINISHED")


def reconcile_before_start(flow_run_id: str) -> None:
    """End the runs of flows that died, logging each; an unreachable store or server only warns: the
    flow itself does not need it."""
    from tasks.plumbing.reconcile import reconcile_runs  # it reads this module's tags

    log = get_run_logger()
    try:
        ended = reconcile_runs(by=flow_run_id, exclude_flow_run=flow_run_id)
    except Exception as exc:
        log.warning(f"Runs of dead flows not reconciled: {exc!r}")
        return
    for run in ended:
        log.info(f"Ended MLflow run {run.run_id} ({run.run_name}) of flow run {run.flow_run_id} {run.status}: "
                 f"{run.reason}")


def flow_run_tags() -> dict[str, str]:
    """The Prefect flow run a stage or round run belongs to, so it names it without walking up its parents."""
    flow_run_id = flow_run.get_id()
    return {FLOW_RUN_TAG: str(flow_run_id)} if flow_run_id else {}


def ended_status(exc: BaseException) -> str:
    """KILLED for a cancellation (Prefect's termination signal, Ctrl-C), FAILED otherwise."""
    return "KILLED" if isinstance(exc, (ExternalSignal, KeyboardInterrupt, SystemExit)) else "FAILED"


@contextmanager
def stage_run(stage: str, parent_run_id: str, params: dict) -> Iterator[str]:
    """Child run of ``parent_run_id``; ends FAILED on an exception, KILLED on cancellation."""
    mlflow.set_tracking_uri(tracking_uri())
    run = mlflow.start_run(experiment_id=experiment_id(), run_name=stage, parent_run_id=parent_run_id,
                           tags={"stage": stage} | flow_run_tags())
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
    tags = {PARENT_TAG: parent_run_id, "stage": "round", "round": str(round_no)} | flow_run_tags()
    run = client.create_run(experiment_id(), run_name=f"round-{round_no}", tags=tags)
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
