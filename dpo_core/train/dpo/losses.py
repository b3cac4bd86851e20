"""DPO-family losses: small pure functions of per-pair log-probabilities, one per loss type.

Every loss reads a ``PairLogps`` and returns per-pair losses of shape (B,). Notation below:
  pc, pr  = policy log-prob of the chosen / rejected answer, summed over its tokens
  rc, rr  = the same under the reference model
  |c|,|r| = answer lengths in tokens
  c_step  = chosen tokens per pair over the whole optimizer step (all its micro-batches and processes)
  d       = (pc - rc) - (pr - rr), the difference of log-ratios; beta the inverse temperature.
The implicit reward of an answer is beta * (log pi - log pi_ref) (DPO paper, eq. 5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F

from dpo_core.train.config import LossName


@dataclass
class PairLogps:
    policy_chosen: torch.Tensor  # (B,) summed answer log-probs
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # (B,) answer lengths
    rejected_tokens: torch.Tensor
    step_chosen_tokens: float  # c_step: the "sft" term's token mean is over the whole step

    @property
    def delta(self) -> torch.Tensor:
        return (self.policy_chosen - self.ref_chosen) - (self.policy_rejected - self.ref_rejected)

    @property
    def delta_per_token(self) -> torch.Tensor:
        return ((self.policy_chosen - self.ref_chosen) / self.chosen_tokens.clamp(min=1)
                - (self.policy_rejected - self.ref_rejected) / self.rejected_tokens.clamp(min=1))


@dataclass(frozen=True)
class LossSettings:
    beta: float = 0.1
    label_smoothing: float = 0.0  # cdpo / robust: assumed probability that a preference label is flipped
    simpo_gamma: float = 0.5  # simpo: target reward margin


def sigmoid(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * d)."""
    return -F.logsigmoid(o.beta * s.delta)


def cdpo(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """Conservative DPO (DPO paper's cDPO note): labels flipped with probability eps,
    -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)."""
    eps = o.label_smoothing
    return -(1 - eps) * F.logsigmoid(o.beta * s.delta) - eps * F.logsigmoid(-o.beta * s.delta)


def robust(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, eq. 4): the unbiased estimator under label noise eps,
    ((1 - eps)(-log sigmoid(beta d)) - eps(-log sigmoid(-beta d))) / (1 - 2 eps)."""
    eps = o.label_smoothing
    return (-(1 - eps) * F.logsigmoid(o.beta * s.delta) + eps * F.logsigmoid(-o.beta * s.delta)) / (1 - 2 * eps)


def ipo(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17) on per-token log-ratios, as TRL and the IPO authors use it:
    (d_avg - 1 / (2 beta))^2, d_avg = the log-ratios each divided by its answer length."""
    return (s.delta_per_token - 1 / (2 * o.beta)) ** 2


def ipo_sum(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """IPO with summed log-ratios, as in the original implementation: (d - 1 / (2 beta))^2."""
    return (s.delta - 1 / (2 * o.beta)) ** 2


def hinge(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """SLiC-HF (Zhao et al. 2023, eq. 1) hinge on the log-ratio difference: max(0, 1 - beta d)."""
    return torch.relu(1 - o.beta * s.delta)


def sigmoid_norm(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """Length-normalised DPO: -log sigmoid(beta * d_avg) with per-token log-ratios."""
    return -F.logsigmoid(o.beta * s.delta_per_token)


def simpo(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6), reference-free:
    -log sigmoid(beta (pc/|c| - pr/|r|) - gamma)."""
    margin = s.policy_chosen / s.chosen_tokens.clamp(min=1) - s.policy_rejected / s.rejected_tokens.clamp(min=1)
    return -F.logsigmoid(o.beta * margin - o.simpo_gamma)


def sft(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """NLL of the chosen answers per token (added with a weight it gives RPO, Pang et al. 2024):
    -pc / c_step, whose mean over the step's pairs is their summed NLL over their chosen tokens, the
    token mean TRL takes over a batch, however the pairs are split into micro-batches."""
    return -s.policy_chosen / s.step_chosen_tokens


LOSSES: dict[str, Callable[[PairLogps, LossSettings], torch.Tensor]] = {
    "sigmoid": sigmoid, "cdpo": cdpo, "robust": robust, "ipo": ipo, "ipo_sum": ipo_sum,
    "hinge": hinge, "sigmoid_norm": sigmoid_norm, "simpo": simpo, "sft": sft,
}
assert set(get_args(LossName)) == set(LOSSES)  # the config's choices are exactly the losses above


def combined_loss(s: PairLogps, o: LossSettings, types: list[str], weights: list[float]) -> torch.Tensor:
    """Weighted sum of the per-pair losses of ``types``: shape (B,)."""
    return sum(w * LOSSES[t](s, o) for t, w in zip(types, weights, strict=True))
