"""Checks on the embedded SmolLM2-135M-Instruct itself (marked: run with ``pytest -m real_model``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

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


def test_dpo_loss_is_ln2_against_an_independent_reference(smol):
    """The training path's log-probs (prefix-shared, packed, chunked vocabulary projection) against
    a reference from a second load of the model through a plain full-logits forward and
    ``log_softmax``: at step 0 the policy is the reference, so the loss is ln 2 only if both paths
    give the same log-probs (a shifted or mis-masked answer token moves it by beta * error / 2)."""
    model, tok = smol
    chat = [{"role": "user", "content": "Name a colour."}]
    prompt, answers = encode(tok, chat, ["Blue.", "I like turtles."], 256)
    with torch.no_grad():
        policy = answer_token_logps(model, collate([(prompt, answers)], tok.pad_token_id))[0].sum(-1)
        reference_model = load_model(resolve_model(EMBEDDED_DEFAULT)).eval()
        reference = torch.stack([_full_logits_logps(reference_model, prompt, a) for a in answers]).float()
    assert_close(policy, reference, rtol=0, atol=1e-4)  # measured: 2e-6
    s = PairLogps(policy[:1], policy[1:], reference[:1], reference[1:], torch.ones(1), torch.ones(1),
                  step_chosen_tokens=1.0)
    assert sigmoid(s, LossSettings(beta=0.1)).item() == pytest.approx(math.log(2), abs=1e-6)


def _full_logits_logps(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """Summed log-prob of ``answer`` after ``prompt``: one unpadded forward, log-softmax everywhere."""
    logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].double()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(answer)[:, None]).sum()
