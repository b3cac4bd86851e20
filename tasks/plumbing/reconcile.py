"""End the MLflow runs that killed flows left RUNNING.

A flow process killed with ``kill -9`` (a machine crash, the OOM killer) can neither end its MLflow runs
nor tell Prefect, so its parent run, the stage run in progress and the Prefect flow run look alive
forever. Every flow reconciles when it starts (``tracking.flow_parent_run``); ``dpo-pipeline runs
reconcile`` does it by hand. Per flow run, the first rule that applies decides:

1. Prefect says the flow run is over: CANCELLED or CRASHED ends its runs KILLED, COMPLETED or FAILED
   ends them FAILED.
2. Its process ran on this host (the parent run's host, pid and start time tags): gone, the runs end
   KILLED; still there, it is alive, however late its heartbeat (a suspended process, a resumed laptop).
3. Its heartbeat (for runs of older versions: its last metric or start) is older than ``stale_after_s``:
   KILLED.

In 2 and 3 the Prefect flow run, if this server knows it and it is not over, is set Crashed too, so its
UI stops showing it running. Runs that name no flow run, on themselves or a parent, are someone else's.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from uuid import UUID

import mlflow
import psutil
from mlflow.entities import Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from tasks.plumbing.settings import tracking_uri
from tasks.plumbing.tracking import FLOW_RUN_TAG, HEARTBEAT_TAG, HOST_TAG, PARENT_TAG, PID_STARTED_TAG, PID_TAG

STALE_AFTER_S = 600.0  # twenty missed heartbeats
RECONCILED_BY_TAG = "dpo.reconciled_by"  # the flow run id that reconciled, or cli:<user>@<host>
RECONCILED_REASON_TAG = "dpo.reconciled_reason"
RECONCILED_AT_TAG = "dpo.reconciled_at"  # ISO 8601, UTC
ENDED_AS = {  # the status a final Prefect state ends the runs with
    StateType.CANCELLED: "KILLED", StateType.CRASHED: "KILLED",
    StateType.COMPLETED: "FAILED", StateType.FAILED: "FAILED",
}


@dataclass(frozen=True)
class EndedRun:
    run_id: str
    run_name: str
    flow_run_id: str
    status: str  # KILLED or FAILED
    reason: str


def reconcile_runs(by: str, stale_after_s: float = STALE_AFTER_S, dry_run: bool = False,
                   exclude_flow_run: str | None = None) -> list[EndedRun]:
    """End the RUNNING runs of every dead flow run but ``exclude_flow_run``; with ``dry_run``, only say which."""
    client = MlflowClient(tracking_uri())
    groups = running_runs_by_flow_run(client)
    groups.pop(exclude_flow_run, None)
    if not groups:  # the usual case: no need to reach Prefect
        return []
    ended: list[EndedRun] = []
    with get_client(sync_client=True) as prefect:
        for flow_run_id, (parent, runs) in groups.items():
            state = _prefect_state(prefect, flow_run_id)
            last_seen, end_ms = _last_signs(parent, runs)
            verdict = _verdict(flow_run_id, state, parent, last_seen, stale_after_s)
            if verdict is None:
                continue
            status, reason = verdict
            ended += [EndedRun(run.info.run_id, run.info.run_name, flow_run_id, status, reason) for run in runs]
            if dry_run:
                continue
            for run in runs:
                _end(client, run, status, reason, by, end_ms)
            if state is not None and not state.is_final():
                prefect.set_flow_run_state(flow_run_id, Crashed(message=reason), force=True)
    return ended


def running_runs_by_flow_run(client: MlflowClient) -> dict[str, tuple[Run, list[Run]]]:
    """RUNNING runs of the pipeline in every experiment, by flow run: its parent run and the RUNNING ones."""
    mlflow.set_tracking_uri(tracking_uri())
    running = mlflow.search_runs(filter_string="attributes.status = 'RUNNING'", search_all_experiments=True,
                                 output_format="list")
    known = {run.info.run_id: run for run in running}
    groups: dict[str, tuple[Run, list[Run]]] = {}
    for run in running:
        tagged = [r for r in _lineage(client, run, known) if FLOW_RUN_TAG in r.data.tags]
        if tagged:  # the topmost is the flow run's parent run
            parent = tagged[-1]
            groups.setdefault(parent.data.tags[FLOW_RUN_TAG], (parent, []))[1].append(run)
    return groups


def _lineage(client: MlflowClient, run: Run, known: dict[str, Run]) -> list[Run]:
    """The run, its parent, the parent's parent... (runs of older versions name their flow run only at the top)."""
    chain = [run]
    while (parent_id := chain[-1].data.tags.get(PARENT_TAG)) is not None:
        if parent_id not in known:
            try:
                known[parent_id] = client.get_run(parent_id)
            except MlflowException:  # a parent deleted for good
                break
        chain.append(known[parent_id])
    return chain


def _prefect_state(prefect: SyncPrefectClient, flow_run_id: str) -> State | None:
    try:
        return prefect.read_flow_run(UUID(flow_run_id)).state
    except (ObjectNotFound, ValueError):  # a flow run of another Prefect server, or no flow run id at all
        return None


def _last_signs(parent: Run, runs: list[Run]) -> tuple[float, int]:
    """When the flow last showed life (epoch seconds: its heartbeat; for runs of older versions, its last
    metric or run start), and the end time its runs get (ms: the last heartbeat or metric, else now)."""
    heartbeat = _number(parent, HEARTBEAT_TAG)
    # to_proto carries the latest value of each metric with its timestamp; .metrics has values only
    stamps = [m.timestamp / 1000 for run in [parent, *runs] for m in run.data.to_proto().metrics]
    last_metric = max(stamps, default=None)
    started = max(run.info.start_time for run in [parent, *runs]) / 1000
    last_seen = heartbeat or max(last_metric or 0, started)
    return last_seen, round(1000 * max(filter(None, (heartbeat, last_metric)), default=time.time()))


def _verdict(flow_run_id: str, state: State | None, parent: Run, last_seen: float,
             stale_after_s: float) -> tuple[str, str] | None:
    """How the flow run's runs end and why, or None while it is alive; ``last_seen`` in epoch seconds."""
    if state is not None and state.type in ENDED_AS:
        return ENDED_AS[state.type], f"Prefect flow run {flow_run_id} is {state.type.value}"
    pid, started = _number(parent, PID_TAG), _number(parent, PID_STARTED_TAG)
    if parent.data.tags.get(HOST_TAG) == socket.gethostname() and pid is not None and started is not None:
        if _process_gone(int(pid), started):
            return "KILLED", f"flow process {int(pid)} on {socket.gethostname()} is gone"
        return None
    silent_s = time.time() - last_seen
    if silent_s > stale_after_s:
        return "KILLED", f"no heartbeat for {silent_s:.0f} s (stale after {stale_after_s:.0f} s)"
    return None


def _number(run: Run, tag: str) -> float | None:
    """A liveness tag's value, or None when it is missing or was edited into something else: one
    run's damaged tag then falls back to the next rule rather than stopping every reconciliation."""
    try:
        return float(run.data.tags[tag])
    except (KeyError, ValueError):
        return None


def _process_gone(pid: int, started: float) -> bool:
    """No process with this pid and start time, or only its zombie."""
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) > 1 or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _end(client: MlflowClient, run: Run, status: str, reason: str, by: str, end_ms: int) -> None:
    tags = {RECONCILED_BY_TAG: by, RECONCILED_REASON_TAG: reason,
            RECONCILED_AT_TAG: datetime.now(timezone.utc).isoformat(timespec="seconds")}
    client.log_batch(run.info.run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    client.set_terminated(run.info.run_id, status, end_time=max(end_ms, run.info.start_time))
