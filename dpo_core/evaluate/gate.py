"""The promotion gate: a challenger replaces the champion only when it wins, with confidence.

Rule: the lower end of the paired-bootstrap interval of (challenger - champion) on the primary
metric's per-prompt scores must reach ``min_improvement``, and no guard metric may fall by more
than ``guard_tolerance``. Any metric with per-prompt scores will do (dpo_core.evaluate.metrics):
the verifiable accuracies, the judge's rating, the reward, or a head-to-head win rate, where the
champion's side is 0.5 per prompt (a model ties with itself), so the interval is of the win rate
minus one half. Prompts without a score on both sides (no instructions, an unparseable judge
answer) are left out and counted. The decision carries every number it used and a reason per rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from dpo_core.common.config import config_dataclass
from dpo_core.common.records import EvalSample
from dpo_core.evaluate.benchmarks.stats import paired_bootstrap
from dpo_core.evaluate.metrics import GATE_METRICS, HEAD_TO_HEAD, JUDGE_RATING, REWARD, VERIFIABLE, GateMetric, versus

# Without a configured primary metric: the first the evaluation produced, and why it is the default
DEFAULTS = (("verifiable/prompt_strict", "the held-out prompts have verifiable instructions"),
            (JUDGE_RATING, "no verifiable instructions; the judge rated every answer"),
            (REWARD, "no verifiable instructions; the reward model scored every answer"))


@config_dataclass
class GateConfig:
    primary_metric: GateMetric | None = Field(
        None, description="The per-prompt metric the challenger must raise. Unset: verifiable/prompt_strict when the "
                          "held-out prompts have instructions, else judge/rating with a judge, else reward/score")
    min_improvement: float = Field(0.0, allow_inf_nan=False, description="The interval's lower end must exceed this, "
                                   "in the metric's units: accuracies and win rates 0-1, judge ratings 1-10, rewards "
                                   "the reward model's")
    confidence: float = Field(0.9, gt=0.5, lt=1.0, description="Of the paired bootstrap interval")
    guard_metrics: list[GateMetric] | None = Field(
        None, description="Metrics that may not drop more than guard_tolerance. Unset: verifiable/instruction_loose "
                          "when the primary metric is a verifiable one, none otherwise")
    guard_tolerance: float = Field(0.02, ge=0.0, allow_inf_nan=False, description="Largest drop a guard metric may "
                                   "show, in its units (0.02 of an accuracy: about one prompt in 50)")
    registered_model: str = Field("dpo-policy", min_length=1, description="MLflow registry name (challenger and "
                                                                          "champion aliases)")


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    bootstrap: dict  # of the primary metric; empty when no prompt had a score on both sides
    scores: dict  # {"challenger": {...}, "champion": {...}}: every available metric's mean over its paired prompts
    primary_metric: str  # as configured, or the default the gate chose


def per_prompt_scores(samples: list[EvalSample], metric: str) -> list[float | None]:
    """The per-prompt values whose mean is ``metric``. Verifiable metrics come from the pass flags:
    pass/fail for prompt-level, the share of instructions followed for instruction-level
    (equal-weighted per prompt), None for a prompt without instructions. Others are the scores the
    evaluation stored (None: not scored, e.g. the judge's answer was unparseable)."""
    if metric not in VERIFIABLE:
        return [s.scores.get(metric) for s in samples]
    flags = [s.passed_loose if metric.endswith("loose") else s.passed_strict for s in samples]
    if metric.startswith("verifiable/prompt"):
        return [float(all(f)) if f else None for f in flags]
    return [sum(f) / len(f) if f else None for f in flags]


def paired_scores(challenger: list[EvalSample], champion: list[EvalSample], metric: str) -> tuple[list[float], list[float]]:
    """Both sides' values of ``metric`` on the prompts where both have one."""
    if metric in HEAD_TO_HEAD:
        ours = per_prompt_scores(challenger, versus(metric, champion[0].model))
        theirs = [0.5] * len(ours)
    else:
        ours, theirs = per_prompt_scores(challenger, metric), per_prompt_scores(champion, metric)
    kept = [(a, b) for a, b in zip(ours, theirs, strict=True) if a is not None and b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


def available_metrics(challenger: list[EvalSample], champion: list[EvalSample]) -> list[str]:
    """The gate metrics this evaluation produced for both sides (possibly with no value anywhere, when a
    judge could not rate a single answer)."""
    def produced(samples, name):
        return any(s.passed_strict for s in samples) if name in VERIFIABLE else any(name in s.scores for s in samples)

    return [m for m in GATE_METRICS
            if (produced(challenger, versus(m, champion[0].model)) if m in HEAD_TO_HEAD
                else produced(challenger, m) and produced(champion, m))]


def decide(challenger: list[EvalSample], champion: list[EvalSample], cfg: GateConfig) -> Decision:
    if not challenger or [s.prompt_id for s in challenger] != [s.prompt_id for s in champion]:
        raise ValueError("challenger and champion must be evaluated on the same prompts, in the same order")
    available = available_metrics(challenger, champion)
    primary, why = _primary(cfg, available)
    guards = cfg.guard_metrics if cfg.guard_metrics is not None else (
        ["verifiable/instruction_loose"] if primary in VERIFIABLE else [])
    for setting, metric in [("primary_metric", primary)] + [("guard_metrics", g) for g in guards]:
        if metric not in available:
            raise ValueError(f"gate.{setting}={metric!r}: the evaluation of {challenger[0].model} and "
                             f"{champion[0].model} did not produce it; available: {', '.join(available) or 'none'}")
    paired = {m: paired_scores(challenger, champion, m) for m in available}
    means = {side: {m: sum(v[k]) / len(v[k]) for m, v in paired.items() if v[k]}
             for k, side in enumerate(("challenger", "champion"))}
    ours, theirs = paired[primary]
    left_out = len(challenger) - len(ours)
    scope = f" over the {len(ours)} prompts scored on both sides ({left_out} left out)" if left_out else ""
    if not ours:
        return Decision(False, [f"{primary}{why}: no prompt has a score for both {challenger[0].model} and "
                                f"{champion[0].model}: nothing shows an improvement"], {}, means, primary)
    boot = paired_bootstrap(ours, theirs, confidence=cfg.confidence)
    reasons, ok = [], boot["ci_low"] > cfg.min_improvement
    reasons.append(f"{primary}{why}: {means['challenger'][primary]:.3f} vs {means['champion'][primary]:.3f}{scope}, "
                   f"difference {boot['mean_diff']:+.3f} with {cfg.confidence:.0%} interval "
                   f"[{boot['ci_low']:+.3f}, {boot['ci_high']:+.3f}] {'above' if ok else 'not above'} "
                   f"{cfg.min_improvement:+.3f}")
    for guard in guards:
        if guard not in means["challenger"]:
            ok = False
            reasons.append(f"guard {guard}: no prompt has a score for both sides: nothing shows it did not drop")
            continue
        drop = means["champion"][guard] - means["challenger"][guard]
        passed = drop <= cfg.guard_tolerance
        ok &= passed
        reasons.append(f"guard {guard}: drop {drop:+.3f} {'within' if passed else 'beyond'} "
                       f"tolerance {cfg.guard_tolerance:.3f}")
    return Decision(ok, reasons, boot, means, primary)


def _primary(cfg: GateConfig, available: list[str]) -> tuple[str, str]:
    """The primary metric, and why when the gate chose it."""
    if cfg.primary_metric:
        return cfg.primary_metric, ""
    for metric, why in DEFAULTS:
        if metric in available:
            return metric, f" (gate default: {why})"
    raise ValueError("gate.primary_metric is unset and the evaluation produced none of its defaults "
                     f"({', '.join(m for m, _ in DEFAULTS)}); available: {', '.join(available) or 'none'}")
