"""DPO-family losses: small pure functions of per-pair log-probabilities, one per loss type.

Every loss reads a ``PairLogps`` and returns per-pair losses of shape (B,). Notation below:
  pc, pr  = policy log-prob of the chosen / rejected answer, summed over its tokens
  rc, rr  = the same under the reference model
  |c|,|r| = answer lengths in tokens
  c_step  = chosen tokens per pair over the whole optimizer step (all its micro-batches and processes)
  lc, lr  = pc - rc, pr - rr: the log-ratios; beta the inverse temperature, eps = label_smoothing
  d       = f(lc) - f(lr), the difference of the log-ratios' f-divergence scores (``scores``): with
            the default reverse KL f is the identity and d = lc - lr, DPO's margin.
The implicit reward of an answer is beta * (log pi - log pi_ref) (DPO paper, eq. 5). Each loss
follows TRL 1.16's ``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py) term for term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F

from dpo_core.train.config import LossName


@dataclass
class PairLogps:
    policy_chosen: torch.Tensor  # (B,) summed answer log-probs (LD-DPO-weighted under ld_alpha)
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # (B,) answer lengths
    rejected_tokens: torch.Tensor
    step_chosen_tokens: float  # c_step: the "sft" term's token mean is over the whole step
    policy_chosen_unweighted: torch.Tensor | None = None  # (B,) pc over every token, when ld_alpha weighted it
    pair_weights: torch.Tensor | None = None  # (B,) WPO weight of each pair (use_weighting), else None

    @property
    def chosen_logratio(self) -> torch.Tensor:
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratio(self) -> torch.Tensor:
        return self.policy_rejected - self.ref_rejected

    @property
    def delta(self) -> torch.Tensor:
        return self.chosen_logratio - self.rejected_logratio


@dataclass(frozen=True)
class LossSettings:
    beta: float = 0.1
    label_smoothing: float = 0.0  # cdpo / robust / aot: label flip probability; exo_pair: its eps
    simpo_gamma: float = 0.5  # simpo: target reward margin
    discopop_tau: float = 0.05  # discopop: temperature of the logistic/exponential mix
    f_divergence_type: str = "reverse_kl"  # the divergence to the reference (f-DPO)
    f_alpha_divergence_coef: float = 0.5  # alpha_divergence: its alpha


def scores(s: PairLogps, o: LossSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """f-DPO (Wang et al. 2023, "Beyond Reverse KL", Thm. 1): under an f-divergence to the reference
    the reward is f'(pi / pi_ref); as functions of the log-ratio u: reverse KL u (DPO), forward KL
    1 - e^-u, Jensen-Shannon log 2 + log sigmoid(u), alpha-divergence (e^((alpha-1) u) - 1) / (alpha-1)
    (u itself at alpha = 1; the exponent clamped at 80 as TRL does so e^ stays finite in fp32)."""
    lc, lr = s.chosen_logratio, s.rejected_logratio
    kind, alpha = o.f_divergence_type, o.f_alpha_divergence_coef
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(alpha - 1.0) < 1e-6):
        return lc, lr
    if kind == "forward_kl":
        return 1 - torch.exp(-lc), 1 - torch.exp(-lr)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(lc), math.log(2) + F.logsigmoid(lr)
    if kind == "alpha_divergence":
        return tuple(torch.expm1(((alpha - 1) * u).clamp(max=80.0)) / (alpha - 1) for u in (lc, lr))
    raise ValueError(f"unknown f_divergence_type {kind!r}")


def margin(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """d = f(lc) - f(lr): DPO's log-ratio difference under reverse KL."""
    chosen, rejected = scores(s, o)
    return chosen - rejected


def margin_per_token(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """d with each answer's score divided by its length (IPO, sigmoid_norm)."""
    chosen, rejected = scores(s, o)
    return chosen / s.chosen_tokens.clamp(min=1) - rejected / s.rejected_tokens.clamp(min=1)


def _flip_smoothed(z: torch.Tensor, eps: float) -> torch.Tensor:
    """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z): the logistic loss with labels flipped w.p. eps."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def sigmoid(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * d)."""
    return -F.logsigmoid(o.beta * margin(s, o))


def cdpo(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """Conservative DPO (DPO paper's cDPO note): labels flipped with probability eps,
    -(1 - eps) log sigmoid(beta d) - eps log sigmoid(-beta d)."""
    return _flip_smoothed(o.beta * margin(s, o), o.label_smoothing)


def robust(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, eq. 4): the unbiased estimator under label noise eps,
    ((1 - eps)(-log sigmoid(beta d)) - eps(-log sigmoid(-beta d))) / (1 - 2 eps)."""
    eps, z = o.label_smoothing, o.beta * margin(s, o)
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def ipo(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17) on per-token log-ratios, as TRL and the IPO authors use it:
    (d_avg - 1 / (2 beta))^2, d_avg = the log-ratios each divided by its answer length."""
    return (margin_per_token(s, o) - 1 / (2 * o.beta)) ** 2


def ipo_sum(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """IPO with summed log-ratios, as in the original implementation: (d - 1 / (2 beta))^2."""
    return (margin(s, o) - 1 / (2 * o.beta)) ** 2


def hinge(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """SLiC-HF (Zhao et al. 2023, eq. 1) hinge on the log-ratio difference: max(0, 1 - beta d)."""
    return torch.relu(1 - o.beta * margin(s, o))


def sigmoid_norm(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """Length-normalised DPO: -log sigmoid(beta * d_avg) with per-token log-ratios."""
    return -F.logsigmoid(o.beta * margin_per_token(s, o))


def simpo(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """SimPO (Meng et al. 2024, eq. 6), reference-free:
    -log sigmoid(beta (pc/|c| - pr/|r|) - gamma)."""
    avg = s.policy_chosen / s.chosen_tokens.clamp(min=1) - s.policy_rejected / s.rejected_tokens.clamp(min=1)
    return -F.logsigmoid(o.beta * avg - o.simpo_gamma)


def sft(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """NLL of the chosen answers per token (added with a weight it gives RPO, Pang et al. 2024):
    -pc / c_step, whose mean over the step's pairs is their summed NLL over their chosen tokens, the
    token mean TRL takes over a batch, however the pairs are split into micro-batches. Over every
    token even under ld_alpha, as TRL's."""
    pc = s.policy_chosen if s.policy_chosen_unweighted is None else s.policy_chosen_unweighted
    return -pc / s.step_chosen_tokens


def exo_pair(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """EXO (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
    eq. 16 with K = 2): KL(q || p) from the policy's preference q = (sigmoid(z), sigmoid(-z)),
    z = beta d, to the smoothed label p = (1 - eps, eps):
    sigmoid(z) (log sigmoid(z) - log(1 - eps)) + sigmoid(-z) (log sigmoid(-z) - log eps). eps > 0
    (the paper uses 1e-3): at eps = 0 the target puts no mass on the rejected answer."""
    z, eps = o.beta * margin(s, o), o.label_smoothing
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


def nca_pair(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """NCA (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    paired form): each answer's reward judged on its own, not only against the other, so the chosen
    likelihood is pushed up rather than merely apart from the rejected:
    -log sigmoid(beta lc) - 1/2 log sigmoid(-beta lc) - 1/2 log sigmoid(-beta lr)."""
    rc, rr = o.beta * s.chosen_logratio, o.beta * s.rejected_logratio
    return -F.logsigmoid(rc) - 0.5 * F.logsigmoid(-rc) - 0.5 * F.logsigmoid(-rr)


def bco_pair(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment"),
    paired: a binary classifier whose logit is the implicit reward, chosen -> 1 and rejected -> 0:
    -log sigmoid(beta lc) - log sigmoid(-beta lr). As TRL 1.16 defines it, without the paper's
    running reward shift delta (older TRL subtracted a running mean of the rewards), so it keeps
    no state across steps."""
    return -F.logsigmoid(o.beta * s.chosen_logratio) - F.logsigmoid(-o.beta * s.rejected_logratio)


def sppo_hard(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """SPPO (Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment", eq. 4.7)
    with hard win probabilities P = 1 for the chosen and 0 for the rejected answer: each log-ratio
    regressed to +-1/(2 beta), (lc - 1/(2 beta))^2 + (lr + 1/(2 beta))^2."""
    half = 0.5 / o.beta
    return (s.chosen_logratio - half) ** 2 + (s.rejected_logratio + half) ** 2


def aot(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """AOT (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport"),
    paired: first-order stochastic dominance of the policy's chosen-over-rejected margins over the
    reference's, enforced by sorting each over the batch (the 1-D optimal transport plan) and applying
    cDPO's smoothed logistic loss to the sorted differences: delta_(i) = sort(pc - pr)_(i) -
    sort(rc - rr)_(i), -(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta). Entry i is
    the i-th quantile's loss, not pair i's: only the batch's sum means anything."""
    delta = torch.sort(s.policy_chosen - s.policy_rejected).values - torch.sort(s.ref_chosen - s.ref_rejected).values
    return _flip_smoothed(o.beta * delta, o.label_smoothing)


def aot_unpaired(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios' distribution dominating the
    rejected ones', each sorted over the batch on its own: delta_(i) = sort(lc)_(i) - sort(lr)_(i),
    then AOT's smoothed logistic loss. Entry i is a quantile's loss, as in ``aot``."""
    delta = torch.sort(s.chosen_logratio).values - torch.sort(s.rejected_logratio).values
    return _flip_smoothed(o.beta * delta, o.label_smoothing)


def apo_zero(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions", eq. 7), for chosen answers better than the policy's own: the chosen reward pushed up
    and the rejected down, each anchored at zero, 1 - sigmoid(beta lc) + sigmoid(beta lr)."""
    return 1 - torch.sigmoid(o.beta * s.chosen_logratio) + torch.sigmoid(o.beta * s.rejected_logratio)


def apo_down(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8), for chosen answers worse than the policy's own:
    both likelihoods pushed down, the rejected more, sigmoid(beta lc) + 1 - sigmoid(beta (lc - lr))."""
    lc = s.chosen_logratio
    return torch.sigmoid(o.beta * lc) + 1 - torch.sigmoid(o.beta * (lc - s.rejected_logratio))


def discopop(s: PairLogps, o: LossSettings) -> torch.Tensor:
    """DiscoPOP (Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large
    Language Models", eq. 5; its LLM-discovered "log-ratio modulated loss"): with z = beta d and
    m = sigmoid(z / tau), (1 - m)(-log sigmoid(z)) + m e^-z, the logistic loss blended towards the
    exponential one as the margin grows."""
    z = o.beta * margin(s, o)
    m = torch.sigmoid(z / o.discopop_tau)
    return -F.logsigmoid(z) * (1 - m) + torch.exp(-z) * m


LOSSES: dict[str, Callable[[PairLogps, LossSettings], torch.Tensor]] = {
    "sigmoid": sigmoid, "cdpo": cdpo, "robust": robust, "ipo": ipo, "ipo_sum": ipo_sum,
    "hinge": hinge, "sigmoid_norm": sigmoid_norm, "simpo": simpo, "sft": sft,
    "exo_pair": exo_pair, "nca_pair": nca_pair, "bco_pair": bco_pair, "sppo_hard": sppo_hard,
    "aot": aot, "aot_unpaired": aot_unpaired, "apo_zero": apo_zero, "apo_down": apo_down, "discopop": discopop,
}
assert set(get_args(LossName)) == set(LOSSES)  # the config's choices are exactly the losses above


def combined_loss(s: PairLogps, o: LossSettings, types: list[str], weights: list[float]) -> torch.Tensor:
    """Weighted sum of the per-pair losses of ``types``, each pair's scaled by its WPO weight when
    given (as TRL scales every loss type's): shape (B,)."""
    total = sum(w * LOSSES[t](s, o) for t, w in zip(types, weights, strict=True))
    return total if s.pair_weights is None else total * s.pair_weights
