"""Checks on the embedded SmolLM2-135M-Instruct itself (marked: run with ``pytest -m real_model``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dpo_core.common.chat import encode
from dpo_core.common.models import EMBEDDED_DEFAULT, load_model, load_tokenizer, resolve_model
from dpo_core.inference.config import SamplingConfig
from dpo_core.inference.generation import generate
from dpo_core.train.batching import answer_token_logps, collate
from dpo_core.train.dpo.losses import LossSettings, PairLogps, sigmoid

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smol():
    path = resolve_model(EMBEDDED_DEFAULT)
    return load_model(path), load_tokenizer(path)


def test_converted_checkpoint_is_safetensors_with_chatml_eos(smol):
    model, tok = smol
    assert tok.eos_token == "<|im_end|>" and tok.pad_token != tok.eos_token
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert (Path(resolve_model(EMBEDDED_DEFAULT)) / "model.safetensors").exists()


def test_greedy_answer_is_sensible_and_stops(smol):
    model, tok = smol
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    out = generate(model, tok, [chat], SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=32))[0][0]
    assert "paris" in out.text.lower()
    assert out.n_tokens < 32  # it ended its turn


def test_dpo_loss_is_ln2_against_itself(smol):
    model, tok = smol
    chat = [{"role": "user", "content": "Name a colour."}]
    batch = collate([encode(tok, chat, ["Blue.", "I like turtles."], 256)], tok.pad_token_id)
    with torch.no_grad():
        logps = answer_token_logps(model, batch)[0].sum(-1)
    pc, pr = logps[:1], logps[1:]
    s = PairLogps(pc, pr, pc, pr, torch.ones(1), torch.ones(1), torch.tensor(0.0))
    loss = sigmoid(s, LossSettings(beta=0.1))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
