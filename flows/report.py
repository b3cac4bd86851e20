"""The end-of-run summary printed by ``python -m flows.lifecycle``: results and where they are."""

from __future__ import annotations

from tasks.plumbing.results import EvalReport, PromotionDecision
from tasks.plumbing.settings import home, tracking_uri

# Sections of the score table, by metric family; a section the evaluation did not produce is not printed
SECTIONS = (
    ("Held-out instruction following (greedy decoding; this project's checkers, not IFEval)", ("verifiable/",)),
    ("Transfer prompts: instructions phrased unlike training's, some kinds never trained on (same checkers)",
     ("transfer/",)),
    ("Held-out answers judged (judge/rating 1-10; reward/score the reward model's; DPO's win rates, ties half)",
     ("judge/", "pairwise/", "reward/")),
)


def print_report(report: EvalReport, decision: PromotionDecision) -> None:
    """The lifecycle's summary: scores, head to head, the promotion decision, where it all went."""
    _scores(report)
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(f"\nPromotion: {decision.registered_model} version {decision.version} vs {decision.baseline}: {verdict}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    _locations(report)


def print_scores(report: EvalReport) -> None:
    """One evaluation's summary (``dpo-pipeline evaluate-model``): scores and where they went."""
    _scores(report)
    print(f"\nSamples:        {report.samples_path}")
    _locations(report)


def _scores(report: EvalReport) -> None:
    metrics = list(dict.fromkeys(k for scores in report.scores.values() for k in scores))  # in the stage's order
    for title, prefixes in SECTIONS:
        _table(title, [m for m in metrics if m.startswith(prefixes)], report.scores)
    sectioned = tuple(p for _, prefixes in SECTIONS for p in prefixes)
    _table("Other benchmarks", [m for m in metrics if not m.startswith(sectioned)], report.scores)
    if report.head_to_head:
        print("\nHead to head (per prompt with instructions, more instructions followed wins)")
    for row in report.head_to_head:
        print(f"  {row['model']} vs {row['baseline']}: {row['wins']} wins, {row['ties']} ties, "
              f"{row['losses']} losses, win rate {row['win_rate']:.3f}")


def _locations(report: EvalReport) -> None:
    print(f"\nStage outputs:  {home() / 'stages'}")
    print(f"MLflow store:   {tracking_uri()}  (evaluation run {report.run_id})")
    print(f"Browse runs:    mlflow ui --backend-store-uri {tracking_uri()}")


def _table(title: str, metrics: list[str], scores: dict[str, dict[str, float]]) -> None:
    """One row per metric, one column per model; blank where a model has no value (win rates: DPO only)."""
    if not metrics:
        return
    width = max(len(m) for m in metrics) + 2
    print(f"\n{title}")
    print(f"{'metric':<{width}}" + "".join(f"{label:>10}" for label in scores))
    for m in metrics:
        print(f"{m:<{width}}" + "".join(f"{s[m]:>10.3f}" if m in s else f"{'':>10}" for s in scores.values()))
