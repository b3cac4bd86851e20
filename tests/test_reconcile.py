"""Runs that killed flows left RUNNING are ended, and live ones are not: under the real temporary Prefect
server and the session's MLflow SQLite store.

Each test makes its own flow runs and MLflow runs, with the pipeline's own tagging code, and then sets the
liveness marks a killed or a remote flow would have left. Other tests share the store: assertions are
about this test's runs only, and no reconcile here shortens the stale limit (it would end their live runs).
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Completed, Crashed, Failed, Running

from flows.cli import main
from tasks.plumbing import reconcile, tracking
from tasks.plumbing.reconcile import (
    RECONCILED_AT_TAG,
    RECONCILED_BY_TAG,
    RECONCILED_REASON_TAG,
    STALE_AFTER_S,
    reconcile_runs,
)
from tasks.plumbing.settings import tracking_uri
from tasks.plumbing.tracking import (
    FLOW_RUN_TAG,
    HEARTBEAT_TAG,
    HOST_TAG,
    PARENT_TAG,
    PID_STARTED_TAG,
    PID_TAG,
    experiment_id,
    flow_parent_run,
    heartbeat,
    open_parent_run,
    round_run,
    stage_run,
)

BY = "test-reconciler"
DOOMED_FLOW = """
import time
from prefect import flow
from prefect.runtime import flow_run
from tasks.plumbing.tracking import flow_parent_run, stage_run

@flow(name="reconcile-test-doomed")
def doomed():
    with flow_parent_run({}) as parent, stage_run("sft", parent, {}) as stage:
        print(flow_run.get_id(), parent, stage, flush=True)
        time.sleep(600)

doomed()
"""


@flow(name="reconcile-test")
def placeholder() -> None:
    """Flow runs of it are created with a state and never run."""


@flow(name="reconcile-test-tracked")
def tracked() -> str:
    with flow_parent_run({"test": "reconcile"}) as parent:
        return parent


@pytest.fixture
def client(prefect_server) -> MlflowClient:
    return MlflowClient(tracking_uri())


def flow_run(state) -> str:
    with get_client(sync_client=True) as prefect:
        return str(prefect.create_flow_run(placeholder, state=state).id)


def prefect_state(flow_run_id: str):
    with get_client(sync_client=True) as prefect:
        return prefect.read_flow_run(flow_run_id).state


def pipeline_runs(flow_run_id: str, **marks: str) -> list[str]:
    """A parent run as a flow opens it, a round run under it and a stage run under the round, all RUNNING,
    the stage run tagged as older versions did (no flow run id); ``marks`` overwrite the parent's liveness tags."""
    client = MlflowClient(tracking_uri())
    parent = open_parent_run(flow_run_id, f"reconcile-{flow_run_id[:8]}", {"test": "reconcile"}, "reconcile-test")
    for key, value in marks.items():
        client.set_tag(parent, key, value)
    exp = experiment_id()
    round_tags = {PARENT_TAG: parent, "stage": "round", FLOW_RUN_TAG: flow_run_id}
    round_ = client.create_run(exp, run_name="round-1", tags=round_tags).info.run_id
    stage = client.create_run(exp, run_name="dpo", tags={PARENT_TAG: round_, "stage": "dpo"}).info.run_id
    return [parent, round_, stage]


def ended_of(ended: list, flow_run_id: str) -> dict[str, tuple[str, str]]:
    return {e.run_id: (e.status, e.reason) for e in ended if e.flow_run_id == flow_run_id}


def statuses(client: MlflowClient, run_ids: list[str]) -> list[str]:
    return [client.get_run(run_id).info.status for run_id in run_ids]


def hour_ago() -> str:
    return str(time.time() - 3600)


def silent_s(reason: str) -> int:
    """The seconds a "no heartbeat" reason names, checking it names the default stale limit."""
    return int(re.fullmatch(r"no heartbeat for (\d+) s \(stale after 600 s\)", reason)[1])


def dead_process() -> tuple[str, str]:
    """The pid and start time of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["sleep", "0.5"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return str(child.pid), str(started)


@pytest.mark.parametrize("state", [Crashed, Cancelled])
def test_a_crashed_or_cancelled_flow_run_ends_its_runs_killed(client, state):
    flow_run_id = flow_run(state())
    runs = pipeline_runs(flow_run_id)  # its liveness marks are this live process: Prefect's word wins
    ended = reconcile_runs(by=BY)
    reason = f"Prefect flow run {flow_run_id} is {state().type.value}"
    assert ended_of(ended, flow_run_id) == {run_id: ("KILLED", reason) for run_id in runs}
    for run_id in runs:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags[RECONCILED_BY_TAG] == BY and run.data.tags[RECONCILED_REASON_TAG] == reason
        assert RECONCILED_AT_TAG in run.data.tags and run.info.end_time >= run.info.start_time
    assert prefect_state(flow_run_id).type == state().type  # a final state stays


@pytest.mark.parametrize("state", [Failed, Completed])
def test_a_failed_or_completed_flow_run_ends_its_runs_failed(client, state):
    flow_run_id = flow_run(state())
    runs = pipeline_runs(flow_run_id)
    ended = reconcile_runs(by=BY)
    assert {status for status, _ in ended_of(ended, flow_run_id).values()} == {"FAILED"}
    assert statuses(client, runs) == ["FAILED"] * 3


def test_a_gone_process_on_this_host_ends_killed_and_crashes_the_flow_run(client):
    flow_run_id = flow_run(Running())
    pid, started = dead_process()
    runs = pipeline_runs(flow_run_id, **{PID_TAG: pid, PID_STARTED_TAG: started})
    client.set_tag(runs[0], HEARTBEAT_TAG, str(beat := time.time()))
    ended = reconcile_runs(by=BY)
    reason = f"flow process {pid} on {socket.gethostname()} is gone"
    assert ended_of(ended, flow_run_id) == {run_id: ("KILLED", reason) for run_id in runs}
    assert statuses(client, runs) == ["KILLED"] * 3
    assert {client.get_run(r).info.end_time for r in runs} == {round(beat * 1000)}  # at the last heartbeat
    state = prefect_state(flow_run_id)
    assert state.type == StateType.CRASHED and state.message == reason


def test_a_flow_process_killed_with_sigkill_is_reconciled(client):
    """The real thing: a flow process in the middle of a stage, killed with ``kill -9``."""
    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    doomed = subprocess.Popen([sys.executable, "-c", DOOMED_FLOW], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=Path(__file__).parents[1])
    try:
        flow_run_id, *runs = doomed.stdout.readline().split()
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    assert statuses(client, runs) == ["RUNNING"] * 2
    ended = ended_of(reconcile_runs(by=BY), flow_run_id)
    reason = f"flow process {doomed.pid} on {socket.gethostname()} is gone"
    assert ended == {run_id: ("KILLED", reason) for run_id in runs}
    assert statuses(client, runs) == ["KILLED"] * 2
    assert prefect_state(flow_run_id).type == StateType.CRASHED


def test_a_live_process_on_this_host_is_left_alone_even_when_its_heartbeat_is_late(client):
    flow_run_id = flow_run(Running())
    fresh = pipeline_runs(flow_run_id)
    late = pipeline_runs(flow_run(Running()), **{HEARTBEAT_TAG: hour_ago()})  # a suspended process
    ended = reconcile_runs(by=BY)
    assert not {e.run_id for e in ended} & {*fresh, *late}
    assert statuses(client, fresh + late) == ["RUNNING"] * 6
    assert prefect_state(flow_run_id).type == StateType.RUNNING


@pytest.mark.parametrize("known_to_prefect", [True, False])
def test_another_host_with_a_stale_heartbeat_ends_killed(client, known_to_prefect):
    flow_run_id = flow_run(Running()) if known_to_prefect else str(uuid.uuid4())
    runs = pipeline_runs(flow_run_id, **{HOST_TAG: "elsewhere", HEARTBEAT_TAG: hour_ago()})
    ended = ended_of(reconcile_runs(by=BY), flow_run_id)
    assert {status for status, _ in ended.values()} == {"KILLED"} and set(ended) == set(runs)
    assert 3600 <= silent_s(ended[runs[0]][1]) < 3660
    assert statuses(client, runs) == ["KILLED"] * 3
    if known_to_prefect:
        assert prefect_state(flow_run_id).type == StateType.CRASHED


def test_another_host_with_a_fresh_heartbeat_is_left_alone(client):
    flow_run_id = flow_run(Running())
    runs = pipeline_runs(flow_run_id, **{HOST_TAG: "elsewhere"})
    assert not ended_of(reconcile_runs(by=BY), flow_run_id)
    assert statuses(client, runs) == ["RUNNING"] * 3
    assert prefect_state(flow_run_id).type == StateType.RUNNING


def test_runs_of_older_versions_go_stale_by_their_last_metric(client):
    """No liveness marks: the last metric (or the start) is its last heartbeat, and its end time."""
    flow_run_id = flow_run(Running())
    hours_ago_ms = int(1000 * (time.time() - 7200))
    parent = client.create_run(experiment_id(), start_time=hours_ago_ms, tags={FLOW_RUN_TAG: flow_run_id}).info.run_id
    client.log_metric(parent, "loss", 1.0, timestamp=hours_ago_ms + 1000)
    ended = ended_of(reconcile_runs(by=BY), flow_run_id)
    assert 7199 <= silent_s(ended[parent][1]) < 7260
    assert client.get_run(parent).info.end_time == hours_ago_ms + 1000


def test_damaged_liveness_tags_fall_back_and_stop_no_other_run(client):
    """Tags edited into nonsense: this host's pid unreadable falls back to the heartbeat; a heartbeat
    unreadable falls back to the runs' start (now: alive); a dead flow beside them still ends."""
    bad_pid = flow_run(Running())
    bad_pid_runs = pipeline_runs(bad_pid, **{PID_TAG: "not a pid", HEARTBEAT_TAG: hour_ago()})
    bad_beat = flow_run(Running())
    bad_beat_runs = pipeline_runs(bad_beat, **{HOST_TAG: "elsewhere", HEARTBEAT_TAG: "soon"})
    dead = flow_run(Crashed())
    dead_runs = pipeline_runs(dead)
    ended = reconcile_runs(by=BY)
    assert 3600 <= silent_s(ended_of(ended, bad_pid)[bad_pid_runs[0]][1]) < 3660
    assert not ended_of(ended, bad_beat) and statuses(client, bad_beat_runs) == ["RUNNING"] * 3
    assert statuses(client, dead_runs) == ["KILLED"] * 3


def test_runs_that_name_no_flow_run_are_someone_elses(client):
    long_ago = int(1000 * (time.time() - 7200))
    theirs = client.create_run(experiment_id(), start_time=long_ago).info.run_id
    child = client.create_run(experiment_id(), start_time=long_ago, tags={PARENT_TAG: theirs}).info.run_id
    ended = reconcile_runs(by=BY)
    assert not {e.run_id for e in ended} & {theirs, child}
    assert statuses(client, [theirs, child]) == ["RUNNING"] * 2


def test_the_excluded_flow_run_is_left_alone(client):
    flow_run_id = flow_run(Crashed())
    runs = pipeline_runs(flow_run_id)
    assert not ended_of(reconcile_runs(by=BY, exclude_flow_run=flow_run_id), flow_run_id)
    assert statuses(client, runs) == ["RUNNING"] * 3


def test_a_dry_run_says_which_runs_would_end_and_writes_nothing(client):
    flow_run_id = flow_run(Running())
    runs = pipeline_runs(flow_run_id, **{HOST_TAG: "elsewhere", HEARTBEAT_TAG: hour_ago()})
    assert set(ended_of(reconcile_runs(by=BY, dry_run=True), flow_run_id)) == set(runs)
    assert statuses(client, runs) == ["RUNNING"] * 3
    assert not any(RECONCILED_BY_TAG in client.get_run(run_id).data.tags for run_id in runs)
    assert prefect_state(flow_run_id).type == StateType.RUNNING


def test_the_heartbeat_refreshes_its_tag_until_the_context_exits(client, monkeypatch):
    monkeypatch.setattr(tracking, "HEARTBEAT_S", 0.1)
    (parent, *_) = pipeline_runs(flow_run(Running()), **{HEARTBEAT_TAG: (old := hour_ago())})
    with heartbeat(parent):
        deadline = time.time() + 20
        while client.get_run(parent).data.tags[HEARTBEAT_TAG] == old and time.time() < deadline:
            time.sleep(0.1)
        assert time.time() - float(client.get_run(parent).data.tags[HEARTBEAT_TAG]) < 20
    last = client.get_run(parent).data.tags[HEARTBEAT_TAG]
    time.sleep(0.5)
    assert client.get_run(parent).data.tags[HEARTBEAT_TAG] == last  # stopped


def test_a_retried_flow_run_reuses_its_parent_run_and_marks_it_with_the_new_process(client):
    flow_run_id = flow_run(Running())
    parent, round_, _ = pipeline_runs(flow_run_id, **{HOST_TAG: "elsewhere", PID_TAG: "1", HEARTBEAT_TAG: hour_ago()})
    client.set_terminated(parent, "FAILED")
    assert open_parent_run(flow_run_id, "again", {}) == parent  # not the round run, which names the flow run too
    tags = client.get_run(parent).data.tags
    assert client.get_run(parent).info.status == "RUNNING"
    me = psutil.Process()
    assert (tags[HOST_TAG], tags[PID_TAG], tags[PID_STARTED_TAG]) == (socket.gethostname(), str(me.pid),
                                                                      str(me.create_time()))
    assert time.time() - float(tags[HEARTBEAT_TAG]) < 60


def test_stage_and_round_runs_name_their_flow_run(client, monkeypatch):
    flow_run_id = flow_run(Running())
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", flow_run_id)  # what prefect.runtime reads outside a run context
    (parent, *_) = pipeline_runs(flow_run_id)
    with round_run(parent, 1, {}) as round_id, stage_run("sft", round_id, {}) as stage_id:
        pass
    assert client.get_run(round_id).data.tags[FLOW_RUN_TAG] == flow_run_id
    assert client.get_run(stage_id).data.tags[FLOW_RUN_TAG] == flow_run_id


def test_a_flow_reconciles_before_it_opens_its_parent_run_and_logs_each_run(client, caplog):
    dead = flow_run(Crashed())
    runs = pipeline_runs(dead)
    with caplog.at_level(logging.INFO, logger="prefect.flow_runs"):
        parent = tracked()
    own = client.get_run(parent)
    assert own.info.status == "FINISHED" and own.data.tags[PID_TAG] == str(psutil.Process().pid)
    assert {client.get_run(r).data.tags[RECONCILED_BY_TAG] for r in runs} == {own.data.tags[FLOW_RUN_TAG]}
    logged = [r.getMessage() for r in caplog.records if dead in r.getMessage()]
    assert len(logged) == 3 and all(f"is {StateType.CRASHED.value}" in line for line in logged)


def test_a_reconciliation_error_only_warns(client, caplog, monkeypatch):
    def unreachable(**_):
        raise ConnectionError("tracking server down")

    monkeypatch.setattr(reconcile, "reconcile_runs", unreachable)
    with caplog.at_level(logging.WARNING, logger="prefect.flow_runs"):
        parent = tracked()
    assert client.get_run(parent).info.status == "FINISHED"
    assert any("tracking server down" in r.getMessage() for r in caplog.records)


def test_the_command_prints_and_ends_the_runs(client, capsys):
    flow_run_id = flow_run(Running())
    runs = pipeline_runs(flow_run_id, **{HOST_TAG: "elsewhere", HEARTBEAT_TAG: hour_ago()})
    main(["runs", "reconcile", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    mine = [line for line in lines if flow_run_id in line]
    assert len(mine) == 3 and all(f"flow run {flow_run_id}  KILLED  no heartbeat for" in line for line in mine)
    assert lines[-1].endswith("runs would be ended (dry run)")
    assert statuses(client, runs) == ["RUNNING"] * 3

    main(["runs", "reconcile", "--stale-after", str(STALE_AFTER_S)])
    lines = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in lines if flow_run_id in line} == set(runs)
    assert lines[-1].endswith("runs ended")
    assert statuses(client, runs) == ["KILLED"] * 3
    assert client.get_run(runs[0]).data.tags[RECONCILED_BY_TAG] == f"cli:{getpass.getuser()}@{socket.gethostname()}"


def test_the_command_has_help():
    command = [sys.executable, "-m", "flows.cli", "runs", "reconcile", "--help"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: dpo-pipeline runs reconcile") and "--stale-after SECONDS" in out
