"""Data-parallel training through accelerate's launcher: two CPU processes on gloo take the same
steps as one process accumulating two micro-batches for DPO (LoRA, sharded reference pass and
eval), and as one process with batches of two for SFT (full fine-tune, answers of different
lengths on the two processes); a deadline kills every process of the launch."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file
from torch.testing import assert_close

from dpo_core.common.io import write_jsonl
from tasks.plumbing.child import StageFailed, run_stage_in_child

CHAT = [{"role": "user", "content": "Answer in one short line."}]


def _pairs(tmp_path: Path, n: int) -> str:
    return str(write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt_id": f"p{i}", "prompt": CHAT + [{"role": "user", "content": f"case {i}"}],
         "chosen": [{"role": "assistant", "content": "calm and clear " * (1 + i % 3)}],
         "rejected": [{"role": "assistant", "content": f"NO {i} " * (1 + i % 4)}],
         "score_chosen": 1.0, "score_rejected": 0.0} for i in range(n)]))


def _weights(out: Path) -> dict:
    return load_file(out / "model" / "model.safetensors")


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run(stage, cfg, inputs, out, processes, monkeypatch, lines=None):
    monkeypatch.setenv("DPO_CACHE_DIR", str(out.parent / f"cache-{out.name}"))  # no shared reference cache
    return run_stage_in_child(stage, {"config": cfg, "inputs": inputs}, out, (lines if lines is not None else []).append,
                              processes=processes)


def _assert_same_training(one: Path, two: Path):
    """Same metrics at every step (grad_norm among them: Adam would hide a mis-scaled gradient
    in the weights) and the same final weights. DPO's ``logits/*`` are token-weighted within a
    micro-batch, so they depend on which pairs share one, and the two runs group them differently
    (process 0 takes pairs 0 and 2 of a step, one process 0 and 1)."""
    for a, b in zip(_metrics(one), _metrics(two), strict=True):
        assert set(a) == set(b)
        for key in [k for k in a if not k.startswith(("logits/", "eval_logits/"))]:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    reference = _weights(one)
    for name, weight in _weights(two).items():
        assert_close(weight, reference[name], rtol=1e-4, atol=1e-5)


def test_two_processes_take_the_steps_of_one_with_accumulation(tiny_model, tmp_path, monkeypatch):
    # 15 pairs, 2 held out: 13 to train on in groups of 4, so the last step has one pair and the
    # second process sees none of it
    inputs = {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 15)]}
    # fp32: bf16 matmul kernels differ with the batch's shape, and the two runs batch the pairs differently
    common = {"lora": True, "learning_rate": 5e-3, "batch_size": 2, "epochs": 2, "warmup_ratio": 0.0,
              "eval_fraction": 0.1, "precision": "fp32"}
    lines: list[str] = []
    two = _run("dpo", common | {"num_processes": 2}, inputs, tmp_path / "two", 2, monkeypatch, lines)
    one = _run("dpo", common | {"grad_accum": 2}, inputs, tmp_path / "one", 1, monkeypatch)

    assert two["metrics"]["train_pairs"] == one["metrics"]["train_pairs"] == 13
    steps = _metrics(tmp_path / "two")
    assert [s["step"] for s in steps] == list(range(1, 9))  # ceil(13 / 4) = 4 steps an epoch, written once
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    assert "eval_loss" in steps[-1]
    _assert_same_training(tmp_path / "one", tmp_path / "two")
    assert sum("reference log-probs: computed" in line for line in lines) == 1  # one process reports
    assert (tmp_path / "two" / "eval_pairs.jsonl").read_text() == (tmp_path / "one" / "eval_pairs.jsonl").read_text()


def test_two_process_full_fine_tune_sft_matches_one_process(tiny_model, tmp_path, monkeypatch):
    """SFT's loss is a mean over the step's answer tokens: answers of 1 to 6 words, so the two
    processes' answers always differ in length and must weigh per token as one batch of two does
    (each process's own token mean, averaged, would weigh a short answer's tokens more)."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": f"q{i}", "messages": CHAT + [{"role": "user", "content": f"item {i}"}], "instructions": []}
        for i in range(6)])
    cands = write_jsonl(tmp_path / "cands.jsonl", [
        {"prompt_id": f"q{i}", "index": 0, "model": "m", "text": "short " * (1 + i), "n_tokens": 1 + i,
         "score": 1.0, "passed": []} for i in range(6)])
    inputs = {"model": tiny_model, "prompts_path": str(prompts), "candidates_path": str(cands)}
    common = {"lora": False, "learning_rate": 1e-3, "max_steps": 3, "warmup_ratio": 0.0, "min_score": 1.0,
              "precision": "fp32"}  # fp32: as in the test above
    _run("sft", common | {"batch_size": 1, "num_processes": 2}, inputs, tmp_path / "two", 2, monkeypatch)
    _run("sft", common | {"batch_size": 2}, inputs, tmp_path / "one", 1, monkeypatch)
    _assert_same_training(tmp_path / "one", tmp_path / "two")


def test_deadline_kills_every_process_of_the_launch(tiny_model, tmp_path, monkeypatch):
    inputs = {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 64)]}
    cfg = {"epochs": 50, "batch_size": 2, "num_processes": 2}
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(StageFailed, match="process group was killed"):
        run_stage_in_child("dpo", {"config": cfg, "inputs": inputs}, tmp_path / "out", lambda _: None,
                           timeout_s=20, processes=2)
    out = str(tmp_path / "out")
    assert [p for p in psutil.process_iter(["cmdline"]) if out in " ".join(p.info["cmdline"] or [])] == []


def test_optimizer_in_backward_refuses_several_processes():
    from dpo_core.train.config import DPOConfig

    with pytest.raises(ValueError, match="num_processes=1"):
        DPOConfig(optimizer_in_backward=True, max_grad_norm=0.0, num_processes=2)
