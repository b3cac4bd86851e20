"""DPO numerics: every loss against a value derived by hand in float64, and the answer
log-probs of the prefix-shared, chunked forward against a plain full-logits computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from dpo_core.common.models import load_model
from dpo_core.train.batching import PACKED_ATTENTION, answer_token_logps, collate
from dpo_core.train.config import TrainConfig
from dpo_core.train.dpo.losses import LOSSES, LossSettings, PairLogps, combined_loss
from dpo_core.train.loop import prepare_for_training

# One pair, float64:  pc=-10, pr=-14, rc=-11, rr=-12, |c|=4, |r|=8, and its step's pairs average
# c_step=5 chosen tokens (this pair's 4 among them); beta=0.2 keeps every loss off its flat parts
#   d       = (pc - rc) - (pr - rr) = 1 - (-2) = 3,   beta d = 0.6
#   d_avg   = 1/4 - (-2/8) = 0.5,                    beta d_avg = 0.1
S = PairLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-10.0, -14.0, -11.0, -12.0, 4.0, 8.0)),
              step_chosen_tokens=5.0)
OPTS = LossSettings(beta=0.2, label_smoothing=0.2, simpo_gamma=0.3)


def softplus(x: float) -> float:  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


EXPECTED = {
    "sigmoid": softplus(-0.6),  # -log sigmoid(0.6) = 0.4375
    "cdpo": 0.8 * softplus(-0.6) + 0.2 * softplus(0.6),
    "robust": (0.8 * softplus(-0.6) - 0.2 * softplus(0.6)) / 0.6,
    "ipo": (0.5 - 1 / (2 * 0.2)) ** 2,  # (d_avg - 1/(2 beta))^2 = (0.5 - 2.5)^2 = 4
    "ipo_sum": (3 - 1 / (2 * 0.2)) ** 2,  # (3 - 2.5)^2 = 0.25
    "hinge": 0.4,  # max(0, 1 - beta d) = 1 - 0.6: inside the margin, where the hinge has a gradient
    "sigmoid_norm": softplus(-0.1),  # -log sigmoid(beta d_avg)
    "simpo": softplus(0.45),  # beta (pc/|c| - pr/|r|) - gamma = 0.2 (-2.5 + 1.75) - 0.3 = -0.45
    "sft": 2.0,  # -pc / c_step = 10 / 5: this pair's share of the step's NLL per chosen token
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_hand_derivation(name):
    assert_close(LOSSES[name](S, OPTS), torch.tensor([EXPECTED[name]], dtype=torch.float64))


def test_every_loss_has_a_hand_derivation():
    assert set(EXPECTED) == set(LOSSES)


def test_combined_loss_is_the_weighted_sum():
    got = combined_loss(S, OPTS, ["sigmoid", "sft"], [1.0, 0.2])  # RPO with alpha = 0.2
    assert_close(got, torch.tensor([EXPECTED["sigmoid"] + 0.2 * 2.0], dtype=torch.float64))


def test_sigmoid_is_ln2_when_policy_equals_reference():
    lp = torch.tensor([-7.0, -3.0], dtype=torch.float64)
    s = PairLogps(lp, lp + 1, lp, lp + 1, torch.ones(2), torch.ones(2), step_chosen_tokens=1.0)
    assert_close(LOSSES["sigmoid"](s, LossSettings(beta=0.1)), torch.full((2,), math.log(2.0), dtype=torch.float64))


EXAMPLES = [([5, 6, 7, 8], [[9, 10], [11, 12, 13, 14]]), ([15, 16], [[17, 18, 19, 20, 21], [22]]),
            ([23, 24, 25], [[26], [27, 28]])]


def _naive_logps(model, prompt, answer):
    """One unpadded forward over the whole sequence, log-softmax over every position."""
    full = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0, :-1].double(), -1)
    return full[len(prompt) - 1 :].gather(-1, torch.tensor(answer).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("chunk_tokens", [1024, 2])
def test_answer_logps_match_naive_forward(tiny_model, share_prefix, chunk_tokens):
    model = load_model(tiny_model).eval()
    batch = collate(EXAMPLES, pad_id=0, share_prefix=share_prefix)
    with torch.no_grad():
        logps, _ = answer_token_logps(model, batch, chunk_tokens=chunk_tokens)
        for i, (prompt, answers) in enumerate(EXAMPLES):
            for j, answer in enumerate(answers):
                row = logps[i * 2 + j]
                assert_close(row[: len(answer)].double(), _naive_logps(model, prompt, answer), rtol=1e-4, atol=1e-5)
                assert torch.all(row[len(answer):] == 0)


@pytest.mark.parametrize("lora", [False, True])
def test_prefix_sharing_and_checkpointing_give_the_same_gradients(tiny_model, lora):
    """Shared prefix with gradient checkpointing (the default) against plain rows without it."""
    grads = {}
    for share, ckpt in ((True, True), (False, False)):
        torch.manual_seed(0)
        model = prepare_for_training(load_model(tiny_model), TrainConfig(lora=lora, lora_r=4, gradient_checkpointing=ckpt))
        model.train()
        if lora:
            for n, p in model.named_parameters():  # move B off zero so every LoRA weight gets a gradient
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.02)
        logps, _ = answer_token_logps(model, collate(EXAMPLES, pad_id=0, share_prefix=share))
        (logps.sum(-1) * torch.tensor([1.0, -1.0] * 3)).sum().backward()
        grads[share] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name in grads[True]:
        assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6, msg=name)


def test_num_tokens_counts_full_sequences_either_way():
    shared, plain = collate(EXAMPLES, 0, share_prefix=True), collate(EXAMPLES, 0, share_prefix=False)
    expected = sum(len(p) + len(a) for p, answers in EXAMPLES for a in answers)
    assert shared.num_tokens == plain.num_tokens == expected
    assert shared.input_ids.numel() < plain.input_ids.numel()


@pytest.mark.parametrize("lora", [True, False])
def test_vocabulary_projection_gradient_matches_autograd(tiny_model, lora):
    """The chunked projection's hand-written backward (the input gradient formed in forward when the
    projection is frozen, as with LoRA; recomputed logits when it trains, as in full fine-tuning,
    where it is tied to the embedding) must equal plain autograd through full logits."""
    grads = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = prepare_for_training(load_model(tiny_model), TrainConfig(lora=lora, lora_r=4, gradient_checkpointing=False))
        model.train()
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        batch = collate(EXAMPLES, pad_id=0)
        weights = torch.tensor([1.0, -1.0] * 3)
        if fused:
            logps, _ = answer_token_logps(model, batch, chunk_tokens=3)
            (logps.sum(-1) * weights).sum().backward()
        else:
            total = 0.0
            for i, (prompt, answers) in enumerate(EXAMPLES):
                for j, answer in enumerate(answers):
                    total = total + weights[2 * i + j] * _naive_logps(model, prompt, answer).sum()
            total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and ("model.embed_tokens.weight" in grads[0]) == (not lora)  # tied to lm_head
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name].float(), rtol=1e-3, atol=1e-5, msg=name)  # fp32 vs fp64 softmax


def test_packed_tokens_match_padded_rows(tiny_model):
    """Padding-free packing (the packed SDPA backend) gives the log-probs and gradients of padded
    rows (the eager backend keeps rows padded)."""
    results = []
    for backend in ("sdpa", "eager"):
        model = load_model(tiny_model)
        model.set_attn_implementation(backend)
        model.train()
        batch = collate(EXAMPLES, pad_id=0)
        assert batch.token_slot.numel() < batch.input_ids.numel()  # the batch does carry padding
        logps, _ = answer_token_logps(model, batch)
        (logps.sum(-1) * torch.tensor([1.0, -1.0] * 3)).sum().backward()
        results.append((model.config._attn_implementation, logps.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (packed, packed_logps, packed_grads), (padded, padded_logps, padded_grads) = results
    assert (packed, padded) == (PACKED_ATTENTION, "eager")
    assert_close(packed_logps, padded_logps, rtol=1e-5, atol=1e-5)
    for name, grad in packed_grads.items():
        assert_close(grad, padded_grads[name], rtol=1e-4, atol=1e-6, msg=name)
