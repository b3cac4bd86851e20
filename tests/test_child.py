"""Stages in a child process group: results come back, deadlines kill the whole group, failures
quote the child's error and say whether a retry could help."""

from __future__ import annotations

import os
import signal
import threading
import time

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
