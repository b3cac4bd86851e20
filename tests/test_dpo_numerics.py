"""DPO numerics: the loss against hand-computed values, and answer log-probs against the plain
full-logits computation."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from dpo_core.batching import answer_token_logps, collate
from dpo_core.dpo.losses import sigmoid
from dpo_core.models import load_model


def test_sigmoid_loss_hand_derived():
    # pc - rc = -1 - (-2) = 1, pr - rr = -3 - (-2.5) = -0.5, beta = 0.5 -> z = 0.5 * 1.5 = 0.75
    # loss = -log(sigmoid(0.75)) = log(1 + e^-0.75) = 0.3864...
    loss = sigmoid(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), beta=0.5)
    assert_close(loss, torch.tensor([math.log1p(math.exp(-0.75))]))


def test_sigmoid_loss_is_ln2_when_policy_equals_reference():
    lp = torch.tensor([-7.0, -3.0])
    assert_close(sigmoid(lp, lp + 1, lp, lp + 1, beta=0.1), torch.full((2,), math.log(2.0)))


def test_answer_logps_match_full_logits(tiny_model):
    """Left padding + logits_to_keep must give the same answer log-probs as one unpadded forward
    per sequence over every position."""
    model = load_model(tiny_model).eval()
    examples = [([5, 6, 7, 8], [9, 10]), ([11, 12], [13, 14, 15, 16]), ([17, 18, 19], [20])]
    batch = collate(examples, pad_id=0)
    with torch.no_grad():
        logps, _ = answer_token_logps(model, batch)
        for i, (p, a) in enumerate(examples):
            ids = torch.tensor([p + a])
            full = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            expected = full[len(p) - 1 :].gather(-1, torch.tensor(a).unsqueeze(-1)).squeeze(-1)
            assert_close(logps[i, batch.answer_width - len(a) :], expected, rtol=1e-4, atol=1e-5)
            assert torch.all(logps[i, : batch.answer_width - len(a)] == 0)
