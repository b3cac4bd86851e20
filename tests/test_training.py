"""SFT and DPO on a tiny model: what they write, and DPO's starting point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dpo_core.data.io import write_jsonl
from dpo_core.dpo.trainer import DPOConfig, train_dpo
from dpo_core.models import load_model
from dpo_core.sft import SFTConfig, train_sft

CHAT = [{"role": "user", "content": "Write one word in lowercase."}]


@pytest.fixture()
def pairs_path(tmp_path):
    rows = [{"prompt_id": f"p{i}", "prompt": CHAT, "chosen": [{"role": "assistant", "content": f"calm {i}"}],
             "rejected": [{"role": "assistant", "content": f"LOUD WORDS {i}"}], "score_chosen": 1.0,
             "score_rejected": 0.0} for i in range(8)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_starts_at_ln2_and_learns(tiny_model, pairs_path, tmp_path, lora):
    cfg = DPOConfig(lora=lora, learning_rate=5e-3, epochs=4, batch_size=4, warmup_ratio=0.0)
    result = train_dpo(cfg, tiny_model, pairs_path, tmp_path)
    steps = _metrics(tmp_path)
    # First step: policy == reference, so every pair's loss is -log sigmoid(0) = ln 2.
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["rewards/margins"] > 0
    assert len(steps) == 8 and [s["step"] for s in steps] == list(range(1, 9))
    assert (Path(result.model_path) / "model.safetensors").exists()
    assert (result.adapter_path is not None) == lora
    load_model(result.model_path)  # the merged checkpoint loads as a plain model


def test_sft_trains_on_best_candidates_only(tiny_model, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "a", "messages": CHAT, "instructions": [{"kind": "lowercase", "args": {}}]},
        {"id": "b", "messages": CHAT, "instructions": [{"kind": "lowercase", "args": {}}]}])
    cands = write_jsonl(tmp_path / "cands.jsonl", [
        {"prompt_id": "a", "index": 0, "model": "m", "text": "good", "n_tokens": 2, "score": 1.0, "passed": [True]},
        {"prompt_id": "a", "index": 1, "model": "m", "text": "BAD", "n_tokens": 2, "score": 0.0, "passed": [False]},
        {"prompt_id": "b", "index": 0, "model": "m", "text": "MEH", "n_tokens": 2, "score": 0.0, "passed": [False]}])
    cfg = SFTConfig(learning_rate=1e-2, epochs=5, batch_size=1, min_score=1.0, warmup_ratio=0.0)
    result = train_sft(cfg, tiny_model, prompts, cands, tmp_path / "out")
    assert result.metrics["train_examples"] == 1
    steps = _metrics(tmp_path / "out")
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_bad_config_fails_at_construction():
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(loss_type="nope")
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="scheduler"):
        SFTConfig(scheduler="step")
