"""Stages in a child process group: results come back, deadlines kill the whole group."""

from __future__ import annotations

import psutil
import pytest

from dpo_core.common.io import write_jsonl
from tasks.plumbing.child import run_stage_in_child

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
    job = {"config": {"epochs": 1, "batch_size": 8}, "inputs": {"model": tiny_model, "pairs_path": _pairs(tmp_path, 16)}}
    result = run_stage_in_child("dpo", job, tmp_path / "out", lines.append, on_progress=progress.append)
    assert result["metrics"]["train_pairs"] == 16
    assert [p["done"] for p in progress] == [1, 2] and progress[-1]["total"] == 2
    assert any("loss=" in line for line in lines)


def test_deadline_kills_the_process_group(tiny_model, tmp_path):
    job = {"config": {"epochs": 50, "batch_size": 2}, "inputs": {"model": tiny_model, "pairs_path": _pairs(tmp_path)}}
    with pytest.raises(TimeoutError, match="process group was killed"):
        run_stage_in_child("dpo", job, tmp_path / "out", lambda _: None, timeout_s=3)
    assert _stage_processes(tmp_path / "out") == []


def test_failing_stage_raises_with_its_exit_code(tiny_model, tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    job = {"config": {}, "inputs": {"model": tiny_model, "pairs_path": str(empty)}}
    lines = []
    with pytest.raises(RuntimeError, match="exited with code 1"):
        run_stage_in_child("dpo", job, tmp_path / "out", lines.append)
    assert any("holds no preference pairs" in line for line in lines)
