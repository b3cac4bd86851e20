"""DPO-family losses: pure functions of summed answer log-probs, one per loss type.

Each takes (policy_chosen, policy_rejected, ref_chosen, ref_rejected) log-probs of shape (B,)
and ``beta``, and returns per-pair losses (B,). Rewards are reported separately as
``beta * (log pi - log pi_ref)``, the implicit reward of the DPO paper (eq. 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * ((pc - rc) - (pr - rr)))."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


LOSSES = {"sigmoid": sigmoid}


def implicit_rewards(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    return beta * (policy - reference).detach()
