"""precision=auto on the CPU: bf16 autocast where the CPU has native bf16 matrix units (AVX512_BF16
or AMX: about 4x fp32 matmuls, NOTES), fp32 where it has none (bf16 would be emulated, slower than
fp32); a bf16 DPO run starts at ln 2 because its reference runs in bf16 too; and the answer-only
head's backward under bf16 autocast is the gradient of the log-probs its forward returned."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.testing import assert_close

from dpo_core.common.io import write_jsonl
from dpo_core.train import loop
from dpo_core.train.batching import _chunked_logps
from dpo_core.train.config import DPOConfig, SFTConfig
from dpo_core.train.dpo.trainer import train_dpo

CHAT = [{"role": "user", "content": "Write one word in lowercase."}]


def test_cpu_flags_name_the_bf16_units():
    assert loop.bf16_units_in({"avx2", "avx512f", "avx512bw", "avx512_bf16"}) == "AVX512_BF16"
    assert loop.bf16_units_in({"avx512_bf16", "amx_tile", "amx_bf16"}) == "AMX_BF16"
    assert loop.bf16_units_in({"avx2", "avx512f", "avx512bw", "avx512_vnni"}) is None  # bf16 only emulated


@pytest.mark.parametrize(("units", "auto"), [("AVX512_BF16", "bf16"), ("AMX_BF16", "bf16"), (None, "fp32")])
def test_auto_follows_the_cpu_and_an_explicit_choice_wins(monkeypatch, units, auto):
    monkeypatch.setattr(loop, "cpu_bf16_units", lambda: units)
    for cfg in (DPOConfig(), SFTConfig()):
        assert loop.resolved_precision(cfg) == auto
        assert ("bf16 autocast" in loop.describe_precision(cfg)) == (auto == "bf16")
    assert loop.resolved_precision(DPOConfig(precision="fp32")) == "fp32"
    assert loop.resolved_precision(DPOConfig(precision="bf16")) == "bf16"
    assert isinstance(loop.autocast(DPOConfig()), torch.autocast) == (auto == "bf16")


def test_bf16_cpu_dpo_starts_at_ln2_with_its_reference_in_bf16(tiny_model, tmp_path, monkeypatch):
    """Step 1: policy == reference. With the reference's log-probs computed in bf16 as the policy's
    are, every pair's log-ratio is 0 and the loss -log sigmoid(0) = ln 2; an fp32 reference against
    a bf16 policy would be off by ~5e-3 nats a sequence (beta = 1 shows it whole). All 8 pairs in one
    batch in both passes: bf16 kernels also move results by ~5e-4 nats with the batch's shape."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(loop, "cpu_bf16_units", lambda: "AVX512_BF16")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt_id": f"p{i}", "prompt": CHAT, "chosen": [{"role": "assistant", "content": "calm " * (1 + i)}],
         "rejected": [{"role": "assistant", "content": "LOUD " * (1 + (5 * i) % 8)}], "score_chosen": 1.0,
         "score_rejected": 0.0} for i in range(8)])
    common = dict(lora=False, beta=1.0, max_steps=1, batch_size=8)
    runs = {p: train_dpo(DPOConfig(precision=p, **common), tiny_model, [pairs], tmp_path / p) for p in ("auto", "fp32")}
    assert runs["auto"].precision == "bf16" and runs["fp32"].precision == "fp32"
    assert json.loads((tmp_path / "auto" / "train_config.json").read_text())["resolved_precision"] == "bf16"
    (bf16,), (fp32,) = ([json.loads(line) for line in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
                        for p in ("auto", "fp32"))
    assert bf16["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert bf16["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert bf16["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
    assert abs(bf16["logps/chosen"] - fp32["logps/chosen"]) > 1e-3  # it did run in bf16
    assert bf16["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=0.05)


def test_trained_head_gradient_under_bf16_autocast_is_the_gradient_of_its_log_probs():
    """The trained head's backward recomputes each chunk's logits: under forward's autocast, so in
    bf16 as forward made them. Recomputed in fp32 they would not normalise against forward's bf16
    log-sum-exp: softmax - onehot would no longer sum to 0 over the vocabulary, which shows in the
    head's gradient summed over it (exactly 0 in exact arithmetic), and the hidden states' gradient
    would leave autograd's for the same bf16 logits by 2e-2 of its norm (it equals it here)."""
    torch.manual_seed(0)
    hidden = torch.randn(200, 64, requires_grad=True)
    head = torch.nn.Linear(64, 5000, bias=False)
    with torch.no_grad():
        head.weight.mul_(10)
    targets = torch.randint(0, 5000, (200,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = _chunked_logps(head, hidden, targets, 64)
        logits = (hidden @ head.weight.t()).float()
    ours = torch.autograd.grad(logps.sum(), [hidden, head.weight])
    autograd = torch.autograd.grad(logits.log_softmax(-1).gather(-1, targets[:, None]).sum(), [hidden, head.weight])
    assert torch.linalg.vector_norm(ours[0] - autograd[0]) < 1e-3 * torch.linalg.vector_norm(autograd[0])
    assert_close(ours[1].sum(0), torch.zeros(64), atol=1e-3, rtol=0)
