"""Stages in a child process group: results come back, deadlines kill the whole group, failures
quote the child's error and say whether a retry could help; a stage dies with a task process killed
by kill -9, and two runs of one stage folder never write it at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from prefect import flow, task
from prefect.states import Failed

from dpo_core.common.io import write_jsonl
from tasks.plumbing.child import StageFailed, run_stage_in_child
from tasks.plumbing.stage import retry_transient

CHAT = [{"role": "user", "content": "hi"}]


def _pairs(tmp_path, n=64):
    return str(write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt_id": f"p{i}", "prompt": CHAT, "chosen": [{"role": "assistant", "content": "yes " * 50}],
         "rejected": [{"role": "assistant", "content": "no"}], "score_chosen": 1.0, "score_rejected": 0.0}
        for i in range(n)]))


def _stage_processes(out_dir):
    return [p for p in psutil.process_iter(["cmdline"]) if str(out_dir) in " ".join(p.info["cmdline"] or [])]


ROOT = Path(__file__).parents[1]


def _wait_for(condition, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout}s in vain")


def test_child_returns_result_and_relays_logs(tiny_model, tmp_path):
    lines, progress = [], []
    job = {"config": {"epochs": 1, "batch_size": 8}, "inputs": {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 16)]}}
    result = run_stage_in_child("dpo", job, tmp_path / "out", lines.append, on_progress=progress.append)
    assert result["metrics"]["train_pairs"] == 16
    assert [p["done"] for p in progress] == [1, 2] and progress[-1]["total"] == 2
    assert any("loss=" in line for line in lines)


def test_deadline_kills_the_process_group(tiny_model, tmp_path):
    job = {"config": {"epochs": 50, "batch_size": 2}, "inputs": {"model": tiny_model, "pairs_paths": [_pairs(tmp_path)]}}
    with pytest.raises(StageFailed, match="process group was killed") as failed:
        run_stage_in_child("dpo", job, tmp_path / "out", lambda _: None, timeout_s=3)
    assert not failed.value.retryable
    assert _stage_processes(tmp_path / "out") == []


def test_bad_data_fails_once_quoting_the_childs_error(tiny_model, tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    job = {"config": {}, "inputs": {"model": tiny_model, "pairs_paths": [str(empty)]}}
    lines = []
    with pytest.raises(StageFailed, match=r"stage dpo failed: ValueError: no preference pairs .*empty.jsonl: 0") as failed:
        run_stage_in_child("dpo", job, tmp_path / "out", lines.append)
    assert not failed.value.retryable  # the same file would fail the same way
    assert any("Traceback" in line for line in lines)  # the whole traceback still reaches the run's log


def test_a_bad_config_is_quoted_too(tiny_model, tmp_path):
    job = {"config": {"num_procesess": 2}, "inputs": {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 4)]}}
    with pytest.raises(StageFailed, match="num_procesess") as failed:
        run_stage_in_child("dpo", job, tmp_path / "out", lambda _: None)
    assert not failed.value.retryable


def test_a_child_killed_from_outside_may_be_retried(tiny_model, tmp_path):
    job = {"config": {"epochs": 50, "batch_size": 2}, "inputs": {"model": tiny_model, "pairs_paths": [_pairs(tmp_path)]}}
    out = tmp_path / "out"

    def kill_when_started():
        for _ in range(600):
            procs = _stage_processes(out)
            if procs:
                time.sleep(1)
                os.kill(procs[0].pid, signal.SIGKILL)  # as the OOM killer or a preempted machine would
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    with pytest.raises(StageFailed, match="killed by signal 9") as failed:
        run_stage_in_child("dpo", job, out, lambda _: None)
    killer.join()
    assert failed.value.retryable


def test_a_stage_dies_with_a_task_process_killed_by_kill_9(tiny_model, tmp_path):
    job = {"config": {"epochs": 50, "batch_size": 2}, "inputs": {"model": tiny_model, "pairs_paths": [_pairs(tmp_path)]}}
    out = tmp_path / "out"
    task_process = subprocess.Popen(
        [sys.executable, "-c", "import json, sys; from pathlib import Path; from tasks.plumbing.child import "
         "run_stage_in_child; run_stage_in_child('dpo', json.loads(sys.argv[1]), Path(sys.argv[2]), print)",
         json.dumps(job), str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage = _wait_for(lambda: [p for p in _stage_processes(out) if p.pid != task_process.pid])
    task_process.kill()  # kill -9: no clean-up runs in it
    task_process.wait()
    _, alive = psutil.wait_procs(stage, timeout=10)
    assert alive == [], "the stage outlived the task process that started it"


def test_a_second_run_of_a_stage_folder_waits_for_the_first_and_reuses_its_result(tiny_model, tmp_path):
    job = {"config": {"epochs": 4, "batch_size": 2}, "inputs": {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 16)]}}
    out = tmp_path / "out"
    first: dict = {}
    running = threading.Thread(target=lambda: first.update(run_stage_in_child("dpo", job, out, lambda _: None)))
    running.start()
    _wait_for(lambda: _stage_processes(out))
    lines: list[str] = []
    second = run_stage_in_child("dpo", job, out, lines.append)  # same inputs, same folder, while the first trains
    running.join()
    assert any("waiting for it to end" in line for line in lines)
    assert any("already finished" in line for line in lines) and not any("loss=" in line for line in lines)
    assert second == first


@pytest.mark.parametrize(("error", "retried"), [
    (StageFailed("stage sft failed: ValueError: bad row", retryable=False), False),
    (StageFailed("stage sft was killed by signal 9", retryable=True), True),
    (ValueError("pairs.jsonl:3: not valid JSON"), False),
    (ConnectionError("MLflow server refused the connection"), True),
])
def test_prefect_retries_only_what_may_not_happen_again(prefect_server, error, retried):
    attempts = []

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def flaky():
        attempts.append(1)
        raise error

    @flow
    def one_task() -> bool:
        return flaky(return_state=True).is_failed()

    assert one_task()
    assert len(attempts) == (2 if retried else 1)
    assert retry_transient(None, None, Failed(data=error)) is retried
