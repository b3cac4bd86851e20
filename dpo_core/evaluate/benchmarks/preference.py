"""Held-out preference accuracy of DPO's implicit reward, and perplexity on held-out answers."""

from __future__ import annotations

import math

import torch

from dpo_core.common.chat import encode
from dpo_core.common.records import PreferencePair
from dpo_core.train.dpo.reference import compute_reference_logps


def summed_logps(model, tokenizer, pairs: list[PreferencePair], max_length: int, batch_size: int):
    """(N, 2) summed log-probs of [chosen, rejected] and (N, 2) answer lengths."""
    examples = [encode(tokenizer, p.prompt, [p.chosen[0]["content"], p.rejected[0]["content"]], max_length)
                for p in pairs]
    lengths = torch.tensor([[len(a) for a in answers] for _, answers in examples])
    return compute_reference_logps(model, examples, tokenizer.pad_token_id, batch_size), lengths


def preference_accuracy(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> dict[str, float]:
    """How often the implicit reward beta * (log pi - log pi_ref) ranks chosen above rejected,
    from (N, 2) summed log-probs of [chosen, rejected] under the policy and the reference."""
    rewards = beta * (policy_logps - reference_logps)
    margins = rewards[:, 0] - rewards[:, 1]
    return {"preference_accuracy": (margins > 0).float().mean().item(), "reward_margin": margins.mean().item()}


def perplexity(logps: torch.Tensor, lengths: torch.Tensor) -> float:
    """exp(mean NLL per token) of the chosen answers (column 0), the held-out "SFT data"."""
    return math.exp(-logps[:, 0].sum().item() / lengths[:, 0].sum().item())
