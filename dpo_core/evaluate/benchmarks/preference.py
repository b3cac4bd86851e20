"""Held-out preference accuracy of DPO's implicit reward, and perplexity on held-out answers."""

from __future__ import annotations

import math

import torch

from dpo_core.common.chat import encode
from dpo_core.common.records import PreferencePair
from dpo_core.train.batching import collate, to_device
from dpo_core.train.dpo.reference import pair_logps


@torch.no_grad()
def summed_logps(model, tokenizer, pairs: list[PreferencePair], max_length: int, batch_size: int):
    """(N, 2) summed log-probs of [chosen, rejected] and (N, 2) answer lengths, on the CPU. Each
    batch runs on ``model.device``, wherever ``load_model`` placed the model (the evaluate stage is
    one process: the training device and its sharding over processes are not this stage's)."""
    examples = [encode(tokenizer, p.prompt, [p.chosen[0]["content"], p.rejected[0]["content"]], max_length)
                for p in pairs]
    lengths = torch.tensor([[len(a) for a in answers] for _, answers in examples])
    model.eval()
    rows = []
    for s in range(0, len(examples), batch_size):
        batch = to_device(collate(examples[s : s + batch_size], tokenizer.pad_token_id), model.device)
        rows.append(pair_logps(model, batch).float().cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 2), lengths


def preference_accuracy(policy_logps: torch.Tensor, reference_logps: torch.Tensor, beta: float) -> dict[str, float]:
    """How often the implicit reward beta * (log pi - log pi_ref) ranks chosen above rejected,
    from (N, 2) summed log-probs of [chosen, rejected] under the policy and the reference."""
    rewards = beta * (policy_logps - reference_logps)
    margins = rewards[:, 0] - rewards[:, 1]
    return {"preference_accuracy": (margins > 0).float().mean().item(), "reward_margin": margins.mean().item()}


def perplexity(logps: torch.Tensor, lengths: torch.Tensor) -> float:
    """exp(mean NLL per token) of the chosen answers (column 0), the held-out "SFT data"."""
    return math.exp(-logps[:, 0].sum().item() / lengths[:, 0].sum().item())
