"""The promotion gate: a challenger replaces the champion only when it wins, with confidence.

Rule: the lower end of the paired-bootstrap interval of (challenger - champion) on the primary
metric's per-prompt scores must reach ``min_improvement``, and no guard metric may fall by more
than ``guard_tolerance``. The decision carries every number it used and a reason per rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import Field

from dpo_core.common.config import config_dataclass
from dpo_core.common.records import EvalSample
from dpo_core.evaluate.benchmarks.stats import paired_bootstrap

# The held-out accuracies of this project's own instruction checkers (IFEval's definitions, not its data)
Metric = Literal["verifiable/prompt_strict", "verifiable/instruction_strict", "verifiable/prompt_loose",
                 "verifiable/instruction_loose"]
METRICS = get_args(Metric)


@config_dataclass
class GateConfig:
    primary_metric: Metric = Field("verifiable/prompt_strict",
                                   description="The held-out verifiable-instruction accuracy the challenger must raise")
    min_improvement: float = Field(0.0, ge=-1.0, le=1.0, description="The interval's lower end must exceed this")
    confidence: float = Field(0.9, gt=0.5, lt=1.0, description="Of the paired bootstrap interval")
    guard_metrics: list[Metric] = Field(default_factory=lambda: ["verifiable/instruction_loose"],
                                        description="Metrics that may not drop more than guard_tolerance")
    guard_tolerance: float = Field(0.02, ge=0.0, le=1.0, description="Largest drop a guard metric may show "
                                    "(0.02: about one prompt in 50)")
    registered_model: str = Field("dpo-policy", min_length=1, description="MLflow registry name (challenger and "
                                                                          "champion aliases)")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    bootstrap: dict
    scores: dict  # {"challenger": {...}, "champion": {...}}


def per_prompt_scores(samples: list[EvalSample], metric: str) -> list[float]:
    """The per-prompt values whose mean is ``metric``: pass/fail for prompt-level, the share of
    instructions followed for instruction-level (equal-weighted per prompt)."""
    flags = [s.passed_loose if metric.endswith("loose") else s.passed_strict for s in samples]
    if metric.startswith("verifiable/prompt"):
        return [float(all(f)) for f in flags]
    return [sum(f) / len(f) for f in flags]


def decide(challenger: list[EvalSample], champion: list[EvalSample], cfg: GateConfig) -> Decision:
    if [s.prompt_id for s in challenger] != [s.prompt_id for s in champion]:
        raise ValueError("challenger and champion must be evaluated on the same prompts, in the same order")
    means = {side: {m: sum(v) / len(v) for m in METRICS for v in [per_prompt_scores(samples, m)]}
             for side, samples in (("challenger", challenger), ("champion", champion))}
    boot = paired_bootstrap(per_prompt_scores(challenger, cfg.primary_metric),
                            per_prompt_scores(champion, cfg.primary_metric), confidence=cfg.confidence)
    reasons, ok = [], boot["ci_low"] > cfg.min_improvement
    reasons.append(f"{cfg.primary_metric}: {means['challenger'][cfg.primary_metric]:.3f} vs "
                   f"{means['champion'][cfg.primary_metric]:.3f}, difference {boot['mean_diff']:+.3f} with "
                   f"{cfg.confidence:.0%} interval [{boot['ci_low']:+.3f}, {boot['ci_high']:+.3f}] "
                   f"{'above' if ok else 'not above'} {cfg.min_improvement:+.3f}")
    for guard in cfg.guard_metrics:
        drop = means["champion"][guard] - means["challenger"][guard]
        passed = drop <= cfg.guard_tolerance
        ok &= passed
        reasons.append(f"guard {guard}: drop {drop:+.3f} {'within' if passed else 'beyond'} "
                       f"tolerance {cfg.guard_tolerance:.3f}")
    return Decision(ok, reasons, boot, means)
