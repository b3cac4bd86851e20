"""vLLM's engine, for real on the CPU, on the embedded SmolLM2-135M-Instruct: its greedy answers
against the local backend's, the feedback stage (record formats, the item cache across a kill)
and the evaluate stage with a vLLM judge. One engine serves every test in this process (the
engine is kept per process and the settings are the same), so it starts once here and once in
the killed child."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.models import EMBEDDED_DEFAULT, load_model, load_tokenizer, resolve_model
from dpo_core.data.instructions import INSTRUCTION_SET_PATH
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.stage import evaluate
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.stage import collect_feedback
from dpo_core.inference.config import EngineConfig, SamplingConfig
from dpo_core.inference.generation import generate
from dpo_core.inference.vllm_engine import release_engine, vllm_engine

pytest.importorskip("vllm", reason="vLLM is installed by scripts/install_vllm.sh (make setup)")

ENGINE = EngineConfig(name="vllm", dtype="float32", chunk_prompts=4)  # fp32: the local backend's precision here
SAMPLING = SamplingConfig(num_samples=2, max_new_tokens=32, temperature=0.9)


@pytest.fixture(scope="module")
def smol() -> str:
    yield resolve_model(EMBEDDED_DEFAULT)
    release_engine()


def _shipped_prompts(n: int) -> list[dict]:
    return [{"id": r["id"], "messages": [{"role": "user", "content": r["prompt"]}], "instructions": r["instructions"]}
            for r in list(read_jsonl(INSTRUCTION_SET_PATH))[:n]]


def test_greedy_answers_match_the_local_backend_on_most_prompts(smol):
    chats = [p["messages"] for p in _shipped_prompts(16)]
    answers: dict[int, str] = {}
    vllm_engine(smol, ENGINE).generate(chats, num_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=48, seed=0,
                                       on_prompt=lambda i, g: answers.__setitem__(i, g[0].text))
    local = generate(load_model(smol), load_tokenizer(smol), chats,
                     SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=48, batch_size=16))
    same = sum(answers[i] == local[i][0].text for i in range(len(chats)))
    print(f"greedy answers identical on {same} of {len(chats)} prompts")
    # both are fp32; kernels sum in another order, which can flip a near-tie between two tokens
    assert same >= 12, [(answers[i], local[i][0].text) for i in range(len(chats)) if answers[i] != local[i][0].text]


def test_sampling_prompts_that_chunked_prefill_splits(smol):
    """8 prompts of ~1,500 tokens are more than one engine step's token budget (4096): vLLM 0.32's
    CPU backend crashed on a seeded request whose prefill chunked prefill split (the demo's
    feedback stage did, 64 prompts x 4 samples), so prefills are whole on a CPU. The same seed
    draws the same samples again."""
    long = "Summarise the following notes in one sentence. " + "The river rose overnight and the bridge closed. " * 150
    chats = [[{"role": "user", "content": f"{i}. {long}"}] for i in range(8)]
    draws = []
    for _ in range(2):  # the same seed draws the same samples
        got = {}
        vllm_engine(smol, ENGINE).generate(chats, num_samples=2, temperature=1.2, top_p=1.0,
                                           max_new_tokens=8, seed=11, on_prompt=got.__setitem__)
        assert sorted(got) == list(range(8)) and all(len(g) == 2 and g[0].n_tokens for g in got.values())
        draws.append({i: [x.text for x in g] for i, g in got.items()})
    assert draws[0] == draws[1]
    assert any(a != b for a, b in draws[0].values())  # sampled: a prompt's two answers differ somewhere


def test_feedback_on_vllm_keeps_every_stored_sample_across_a_kill(smol, tmp_path):
    """A stage killed after its first engine call stored that call's samples; the rerun asks the
    engine only for the prompts left, and writes the same record format as the local engine."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", _shipped_prompts(8))
    cache = tmp_path / "items.sqlite"
    job = {"engine": "vllm", "prompts": str(prompts), "out": str(tmp_path / "killed"), "cache": str(cache)}
    child = subprocess.Popen([sys.executable, __file__, json.dumps(job)], start_new_session=True,
                             env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])})
    stored = _wait_for_items(cache, child, at_least=4 * SAMPLING.num_samples)
    os.killpg(child.pid, signal.SIGKILL)  # the child, vLLM's engine process and its workers
    child.wait()
    stored = _count_items(cache)
    assert 0 < stored < 8 * SAMPLING.num_samples, stored

    result = collect_feedback(_feedback_config(cache), EMBEDDED_DEFAULT, prompts, tmp_path / "rerun")
    assert result.stats["cache_hits"] == stored
    assert result.stats["generator_requests"] == 8 - stored // SAMPLING.num_samples  # one request per prompt left
    candidates = list(read_jsonl(result.candidates_path))
    assert len(candidates) == 8 * SAMPLING.num_samples
    assert set(candidates[0]) == {"prompt_id", "index", "model", "text", "n_tokens", "score", "passed", "details", "judge"}
    assert {c["model"] for c in candidates} == {EMBEDDED_DEFAULT}
    assert all(0 < c["n_tokens"] <= SAMPLING.max_new_tokens and c["text"] for c in candidates)
    for pair in read_jsonl(result.pairs_path):
        assert pair["score_chosen"] > pair["score_rejected"]

    again = collect_feedback(_feedback_config(cache), EMBEDDED_DEFAULT, prompts, tmp_path / "again")
    assert again.stats["generator_requests"] == 0
    assert list(read_jsonl(again.candidates_path)) == candidates  # the same samples, read back


def test_evaluate_on_vllm_with_a_vllm_judge(smol, tmp_path):
    """Every model's answers, the verifiable accuracies and the judge's grades, on one engine (the
    two labels and the judge are the same model, so the engine is not restarted)."""
    heldout = write_jsonl(tmp_path / "eval.jsonl", _shipped_prompts(6))
    cfg = EvalConfig(engine=ENGINE, max_new_tokens=48, judge=f"vllm:{EMBEDDED_DEFAULT}", judge_max_new_tokens=64,
                     judge_max_retries=1, win_rate_baselines=["base"])
    result = evaluate(cfg, {"base": EMBEDDED_DEFAULT, "dpo": EMBEDDED_DEFAULT}, heldout, tmp_path / "out")
    samples = list(read_jsonl(result.samples_path))
    assert len(samples) == 12
    base = {s["prompt_id"]: s["response"] for s in samples if s["model"] == "base"}
    assert base == {s["prompt_id"]: s["response"] for s in samples if s["model"] == "dpo"}  # greedy: the same model
    assert 0.0 <= result.scores["dpo"]["verifiable/prompt_strict"] <= 1.0
    assert result.scores["dpo"]["verifiable/prompt_strict"] == result.scores["base"]["verifiable/prompt_strict"]
    assert result.judge_outputs_path and list(read_jsonl(result.judge_outputs_path))


@pytest.fixture(scope="module")
def served(smol):
    """vLLM's OpenAI server on loopback, started as a stage starts it for data_parallel_size > 1."""
    from dpo_core.inference.vllm_engine import ServedEngine

    engine = ServedEngine(smol, EngineConfig(name="vllm", dtype="float32"))
    yield engine
    engine.shutdown()
    assert engine.server.returncode is not None


def test_the_served_engine_answers_as_the_offline_one(smol, served):
    """Greedy answers through vLLM's server equal the offline engine's; K sampled answers per prompt
    arrive together."""
    chats = [p["messages"] for p in _shipped_prompts(6)]
    offline, online, sampled = {}, {}, {}
    greedy = {"num_samples": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 32, "seed": 0}
    vllm_engine(smol, ENGINE).generate(chats, **greedy, on_prompt=lambda i, g: offline.__setitem__(i, g[0].text))
    served.generate(chats, **greedy, on_prompt=lambda i, g: online.__setitem__(i, g[0].text))
    assert online == offline
    served.generate(chats, num_samples=3, temperature=1.0, top_p=1.0, max_new_tokens=16, seed=5,
                    on_prompt=sampled.__setitem__)
    assert sorted(sampled) == list(range(6)) and all(len(g) == 3 and all(x.n_tokens for x in g) for g in sampled.values())


def test_feedback_with_a_generator_and_a_judge_on_vllms_server(served, tmp_path):
    """A shared server as a second generator and as the rubric judge (openai:<url>|<model>)."""
    spec = f"openai:{served.client.base_url}|model"
    prompts = write_jsonl(tmp_path / "prompts.jsonl", _shipped_prompts(4))
    cfg = FeedbackConfig(engine=ENGINE, sampling=SAMPLING, generators=[spec], judge=f"rubric:{spec}",
                         rubric_aspects=["helpfulness"], judge_max_new_tokens=96, judge_max_retries=1)
    result = collect_feedback(cfg, EMBEDDED_DEFAULT, prompts, tmp_path / "out")
    stats = result.stats
    assert stats["generator_requests"] >= 4 * SAMPLING.num_samples  # the server's share: one request per sample
    assert stats["judge_requests"] >= 4
    candidates = list(read_jsonl(result.candidates_path))
    judged = {c["prompt_id"] for c in candidates}
    set_aside = list(read_jsonl(tmp_path / "out" / "set_aside.jsonl"))
    assert len(judged) + len({r["prompt_id"] for r in set_aside}) >= 4  # every prompt judged or set aside with its reason
    assert {c["model"] for c in candidates} <= {EMBEDDED_DEFAULT, served.client.name}


def _feedback_config(cache: Path, engine: str = "vllm") -> FeedbackConfig:
    engine_cfg = ENGINE if engine == "vllm" else EngineConfig(name="local")
    return FeedbackConfig(engine=engine_cfg, sampling=SAMPLING, cache_path=str(cache))


def _count_items(cache: Path) -> int:
    if not cache.exists():
        return 0
    with sqlite3.connect(cache) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not there yet
            return 0


def _wait_for_items(cache: Path, child: subprocess.Popen, at_least: int, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (n := _count_items(cache)) >= at_least:
            return n
        assert child.poll() is None, f"the feedback child exited early with {child.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"no {at_least} items in {cache} after {timeout_s} s")


if __name__ == "__main__":  # the killed child: the feedback stage on vLLM (the engine's spawned process needs the guard)
    job = json.loads(sys.argv[1])
    collect_feedback(_feedback_config(Path(job["cache"]), job["engine"]), EMBEDDED_DEFAULT, Path(job["prompts"]),
                     Path(job["out"]))
