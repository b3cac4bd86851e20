"""The end-of-run summary printed by ``python -m flows.lifecycle``: results and where they are."""

from __future__ import annotations

from dpo_core.evaluate.gate import METRICS
from tasks.plumbing.results import EvalReport, PromotionDecision
from tasks.plumbing.settings import home, tracking_uri


def print_report(report: EvalReport, decision: PromotionDecision) -> None:
    metrics = METRICS
    print("\nHeld-out instruction following (greedy decoding; this project's checkers, not IFEval)")
    print(f"{'model':<10}" + "".join(f"{m:>32}" for m in metrics))
    for label, scores in report.scores.items():
        print(f"{label:<10}" + "".join(f"{scores[m]:>32.3f}" for m in metrics))
    extra = sorted({k for scores in report.scores.values() for k in scores} - set(metrics))
    for label, scores in report.scores.items():
        shown = ", ".join(f"{k} {scores[k]:.3f}" for k in extra if k in scores)
        if shown:
            print(f"{label:<10}{shown}")
    print("\nHead to head (per prompt, more instructions followed wins)")
    for row in report.head_to_head:
        print(f"  {row['model']} vs {row['baseline']}: {row['wins']} wins, {row['ties']} ties, "
              f"{row['losses']} losses, win rate {row['win_rate']:.3f}")
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(f"\nPromotion: {decision.registered_model} version {decision.version} vs {decision.baseline}: {verdict}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    print(f"\nStage outputs:  {home() / 'stages'}")
    print(f"MLflow store:   {tracking_uri()}  (evaluation run {report.run_id})")
    print(f"Browse runs:    mlflow ui --backend-store-uri {tracking_uri()}")
