"""The feedback stage against an OpenAI-compatible server on loopback (a tiny model behind injected faults,
tests/fault_server.py): retries, set-asides, a kill mid-stage and a re-run. vLLM's own server is
tested in tests/test_vllm.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.records import PromptRecord
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.item_cache import ItemCache
from dpo_core.feedback.stage import collect_feedback
from dpo_core.inference.backends import ClientOptions
from dpo_core.inference.config import SamplingConfig
from dpo_core.inference.serve import free_port

HERE = Path(__file__).parent


@pytest.fixture()
def server(tiny_model, tmp_path):
    """Start the fault server; yields a function taking the fault plan and returning (url, log path)."""
    procs = []

    def start(faults: dict | None = None, delay: float = 0.0) -> tuple[str, Path]:
        port, log = free_port(), tmp_path / f"requests-{len(procs)}.jsonl"
        procs.append(subprocess.Popen([sys.executable, str(HERE / "fault_server.py"), "--model", tiny_model,
                                       "--port", str(port), "--log", str(log), "--faults", json.dumps(faults or {}),
                                       "--delay", str(delay), "--stall", "4"]))
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    return url, log
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("fault server did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def _prompts(tmp_path: Path, n: int) -> Path:
    rows = [PromptRecord(**{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}],
                            "instructions": r["instructions"]}).to_dict() for r in read_jsonl(HERE / "data" / "prompts.jsonl")]
    return write_jsonl(tmp_path / "prompts.jsonl", rows[:n])


def _log(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    cache = ItemCache(db)
    try:
        return len(cache)
    finally:
        cache.close()


def _identity(request: dict) -> str:
    return json.dumps([request["messages"], request.get("seed")], sort_keys=True)


def _finished(log: list[dict]) -> list[str]:
    """Requests the server answered in full (no fault injected)."""
    return [_identity(r["request"]) for r in log if r["event"] == "answered" and not r["fault"]]


FAST_CLIENT = ClientOptions(timeout_s=1.5, max_retries=3, concurrency=4)


def test_faults_are_retried_and_every_sample_lands(server, tmp_path):
    url, log_path = server({"2": "500", "3": "timeout", "4": "truncated", "5": "malformed", "6": "500"})
    cfg = FeedbackConfig(sampling=SamplingConfig(num_samples=2, max_new_tokens=8, temperature=1.0),
                         client=FAST_CLIENT)
    result = collect_feedback(cfg, f"openai:{url}|tiny", _prompts(tmp_path, 4), tmp_path / "out")
    candidates = read_jsonl(result.candidates_path)
    assert len(candidates) == 8 and {c["model"] for c in candidates} == {"openai:tiny"}
    stats = result.stats
    assert stats["generator_retries"] >= 5 and stats["generator_failures"] == 0
    assert stats["generator_requests"] == 8 + stats["generator_retries"]
    assert stats["generator_completion_tokens"] == sum(c["n_tokens"] for c in candidates)
    finished = _finished(_log(log_path))
    assert len(finished) == len(set(finished)) == 8  # each sample answered in full exactly once


def test_a_request_that_never_succeeds_is_set_aside_and_retried_next_run(server, tmp_path):
    url, _ = server({str(n): "500" for n in range(1, 5)})  # the first sample's 4 attempts all fail
    cfg = FeedbackConfig(sampling=SamplingConfig(num_samples=2, max_new_tokens=8, temperature=1.0),
                         client=ClientOptions(timeout_s=5, max_retries=3, concurrency=1))
    first = collect_feedback(cfg, f"openai:{url}|tiny", _prompts(tmp_path, 2), tmp_path / "out")
    aside = read_jsonl(tmp_path / "out" / "set_aside.jsonl")
    assert first.stats["set_aside_generation"] == 1 and first.stats["generator_failures"] == 1
    assert aside[0]["stage"] == "generation" and "HTTP 500" in aside[0]["reason"]
    again = collect_feedback(cfg, f"openai:{url}|tiny", _prompts(tmp_path, 2), tmp_path / "out")
    assert again.stats["set_aside_generation"] == 0 and again.stats["generator_requests"] == 1
    assert again.stats["candidates"] == 4


def test_killed_mid_stage_then_rerun_asks_for_no_finished_item_again(server, tmp_path):
    url, log_path = server({"3": "500", "7": "truncated"}, delay=0.15)
    job = {"config": {"sampling": {"num_samples": 2, "max_new_tokens": 8, "temperature": 1.0},
                      "client": {"timeout_s": 5, "max_retries": 3, "concurrency": 2}},
           "inputs": {"model": f"openai:{url}|tiny", "prompts_path": str(_prompts(tmp_path, 12))}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = tmp_path / "stage" / "run"
    cmd = [sys.executable, "-m", "dpo_core", "feedback", str(tmp_path / "job.json"), str(out)]
    stage = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "stage" / "feedback-items.sqlite"
    deadline = time.time() + 120
    while _stored(db) < 8 and time.time() < deadline and stage.poll() is None:
        time.sleep(0.05)
    os.killpg(stage.pid, signal.SIGKILL)
    stage.wait()
    assert not (out / "result.json").exists()  # it really died mid-stage

    stored = _stored(db)
    assert 8 <= stored < 24
    before = len(_log(log_path))
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result = json.loads((out / "result.json").read_text())

    rerun = _log(log_path)[before:]
    asked_again = {_identity(r["request"]) for r in rerun if r["event"] == "received"}
    finished_before = set(_finished(_log(log_path)[:before]))
    assert len(asked_again) == 24 - stored  # only what was not stored is asked for
    # a reply delivered in the instant before the kill may not have been stored; nothing else repeats
    assert len(asked_again & finished_before) <= job["config"]["client"]["concurrency"]
    assert len(read_jsonl(result["candidates_path"])) == 24 and result["stats"]["set_aside_generation"] == 0
    assert result["stats"]["cache_hits"] == stored


def test_rubric_judge_over_the_server_sets_unparseable_items_aside_with_raw_text(server, tiny_model, tmp_path):
    """A tiny random judge never writes the rubric format: each item is asked, re-asked once, then set
    aside with both raw answers; the set-aside is remembered, so a re-run asks the judge nothing."""
    url, log_path = server()
    cfg = FeedbackConfig(sampling=SamplingConfig(num_samples=2, max_new_tokens=8, temperature=1.0),
                         judge=f"rubric:openai:{url}|tiny", rubric_aspects=["overall"], judge_max_retries=1,
                         judge_max_new_tokens=16, client=FAST_CLIENT)
    result = collect_feedback(cfg, tiny_model, _prompts(tmp_path, 3), tmp_path / "out")
    aside = read_jsonl(tmp_path / "out" / "set_aside.jsonl")
    assert [a["stage"] for a in aside] == ["judging"] * 3
    assert all("unparseable after 2 answers" in a["reason"] and len(a["raw"]) == 2 for a in aside)
    assert result.stats["judge_parse_failure_rate"] == 1.0 and result.stats["judge_answers_unparsed"] == 6
    assert result.stats["pairs"] == 0 and result.stats["judge_requests"] == 6
    assert len(_finished(_log(log_path))) == 6
    again = collect_feedback(cfg, tiny_model, _prompts(tmp_path, 3), tmp_path / "out")
    assert len(_log(log_path)) == 12 and again.stats["set_aside_judging"] == 3  # no new request


def test_the_api_key_is_sent_but_never_written_anywhere(server, tmp_path, monkeypatch):
    key = "sk-test-7f3a9c"
    monkeypatch.setenv("MY_ENDPOINT_KEY", key)
    url, log_path = server()
    cfg = FeedbackConfig(sampling=SamplingConfig(num_samples=2, max_new_tokens=4, temperature=1.0),
                         client=ClientOptions(api_key_env="MY_ENDPOINT_KEY", timeout_s=5))
    collect_feedback(cfg, f"openai:{url}|tiny", _prompts(tmp_path, 1), tmp_path / "out")
    sent = {r["auth_sha256"] for r in _log(log_path) if r["event"] == "received"}
    assert sent == {hashlib.sha256(f"Bearer {key}".encode()).hexdigest()}
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_a_prefect_secret_block_reaches_the_stage_as_its_key_variable(prefect_server):
    from prefect.blocks.system import Secret

    from tasks.feedback import _secret_env

    Secret(value="sk-from-block").save("endpoint-key", overwrite=True)
    cfg = FeedbackConfig(client=ClientOptions(api_key_env="JUDGE_KEY"))
    assert _secret_env(cfg, "endpoint-key") == {"JUDGE_KEY": "sk-from-block"}
    assert _secret_env(cfg, None) is None


def test_the_rate_limit_spaces_request_starts(server):
    from dpo_core.inference.openai_client import OpenAIClient, Reply

    url, log_path = server()
    client = OpenAIClient(url, "tiny", concurrency=8, requests_per_s=4.0)
    done = {}
    started = time.monotonic()
    client.run([{"messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2} for i in range(6)],
               done.__setitem__)
    assert time.monotonic() - started >= 5 / 4.0  # 6 starts, 0.25 s apart
    assert len(done) == 6 and all(isinstance(r, Reply) for r in done.values())
    assert client.usage.requests == 6 and client.usage.completion_tokens > 0
