"""Tasks of the iterative flow's rounds: the prompts a round answers, and the round's record (its
metrics in MLflow, whether it regressed, the Prefect progress) and the plot of all rounds."""

from __future__ import annotations

import statistics
from pathlib import Path

import mlflow
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from dpo_core.common.digest import digest_files, digest_json
from dpo_core.evaluate.gate import GateConfig
from dpo_core.iterative import RoundsConfig, load_samples, regression, round_prompts
from tasks.plumbing.results import DatasetRef, EvalReport, FeedbackRef, ModelRef
from tasks.plumbing.settings import stage_dir, tracking_uri

# What a round's record takes from its stages: the feedback stage's stats and the DPO run's last metrics
FEEDBACK_STATS = ("prompts", "candidates", "pairs", "ties_dropped", "judge_parse_failure_rate", "mean_candidate_score",
                  "best_of_k_score", "mean_candidate_tokens", "mean_chosen_tokens", "mean_rejected_tokens", "mean_margin")
DPO_METRICS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "ref_syncs")


class RoundResult(BaseModel):
    round: int
    model: ModelRef
    report: EvalReport
    metrics: dict[str, float]
    score: float  # the gate's primary metric, the round's policy on the held-out prompts
    regressed: bool  # worse than the previous round's policy by the gate's rule
    reasons: list[str]


@task(name="round-prompts", cache_policy=NO_CACHE)
def round_prompts_task(data: DatasetRef, cfg: RoundsConfig, round_no: int) -> DatasetRef:
    """``data`` with the round's training prompts (cheap and deterministic, so never cached)."""
    out = stage_dir("round-prompts", digest_json([data.digest, cfg.prompts, cfg.rounds]))
    path = round_prompts(Path(data.train_path), cfg, round_no, out)
    return data.model_copy(update={"train_path": str(path), "digest": digest_json([data.digest, digest_files([path])])})


@task(name="record-round", cache_policy=NO_CACHE)
def record_round_task(round_no: int, cfg: RoundsConfig, gate: GateConfig, round_run_id: str, parent_run_id: str,
                      feedback: FeedbackRef, model: ModelRef, report: EvalReport,
                      previous: tuple[EvalReport, str]) -> RoundResult:
    """Log the round's metrics on its run and, at step ``round_no``, on the flow's parent run; decide
    whether the round regressed against ``previous`` (the report and label holding the policy the
    round started from); report progress in Prefect."""
    client = MlflowClient(tracking_uri())
    dpo_run = client.get_run(model.run_id).data.metrics
    metrics = {f"feedback/{k}": float(feedback.stats[k]) for k in FEEDBACK_STATS if k in feedback.stats}
    metrics["feedback/tie_rate"] = feedback.stats.get("ties_dropped", 0.0) / max(feedback.stats.get("prompts", 0.0), 1.0)
    metrics |= {f"dpo/{k}": dpo_run[k] for k in DPO_METRICS if k in dpo_run}
    metrics |= {f"heldout/{k}": v for k, v in report.scores["dpo"].items()}
    current = load_samples(report.samples_path, "dpo")
    metrics["heldout/answer_words"] = _mean_words(current)
    if report.transfer_samples_path:
        metrics["transfer/answer_words"] = _mean_words(load_samples(report.transfer_samples_path, "dpo"))
    decision = regression(load_samples(previous[0].samples_path, previous[1]), current, gate)
    score = decision.scores["champion"].get(decision.primary_metric, float("nan"))  # the current round: gate's "champion"
    metrics["regressed"] = float(decision.promote)
    mlflow.set_tracking_uri(tracking_uri())
    for run_id, step in ((round_run_id, 0), (parent_run_id, round_no)):
        prefix = "" if run_id == round_run_id else "round/"
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(prefix + k, v, 0, step) for k, v in metrics.items()])
    create_progress_artifact(100.0 * round_no / cfg.rounds, key="iterative-progress",
                             description=f"round {round_no} of {cfg.rounds} done")
    return RoundResult(round=round_no, model=model, report=report, metrics=metrics, score=score,
                       regressed=decision.promote, reasons=decision.reasons)


@task(name="plot-rounds", cache_policy=NO_CACHE)
def plot_rounds_task(parent_run_id: str, start: EvalReport, start_label: str, rounds: list[RoundResult],
                     best: int) -> None:
    """Held-out scores and answer length by round (round 0: the starting policy) as ``rounds.png`` on
    the parent run, and the rounds' table as a Prefect artifact."""
    start_words = _mean_words(load_samples(start.samples_path, start_label))
    rows = [{"round": 0, **{f"heldout/{k}": v for k, v in start.scores[start_label].items()},
             "heldout/answer_words": start_words}] + [{"round": r.round, **r.metrics} for r in rounds]
    fig = Figure(figsize=(10, 4))
    score_ax, length_ax = fig.subplots(1, 2)
    xs = [row["round"] for row in rows]
    for key, label in (("heldout/verifiable/prompt_strict", "held-out prompt_strict"),
                       ("heldout/transfer/prompt_strict", "transfer prompt_strict")):
        if all(key in row for row in rows):
            score_ax.plot(xs, [row[key] for row in rows], marker="o", label=label)
    score_ax.set(title="Held-out score by round", xlabel="round", ylabel="accuracy", ylim=(0, 1))
    score_ax.legend()
    length_ax.plot(xs, [row["heldout/answer_words"] for row in rows], marker="o", label="held-out answers")
    chosen = [(r.round, r.metrics["feedback/mean_chosen_tokens"]) for r in rounds if "feedback/mean_chosen_tokens" in r.metrics]
    if chosen:
        length_ax.plot(*zip(*chosen, strict=True), marker="s", label="chosen answers (tokens)")
    length_ax.set(title="Answer length by round", xlabel="round", ylabel="words (tokens for chosen)")
    length_ax.legend()
    fig.tight_layout()
    MlflowClient(tracking_uri()).log_figure(parent_run_id, fig, "rounds.png")
    keys = ("heldout/verifiable/prompt_strict", "heldout/transfer/prompt_strict", "heldout/answer_words",
            "feedback/pairs", "feedback/tie_rate", "dpo/rewards/margins")
    lines = ["| round | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {row['round']}{' (best)' if row['round'] == rounds[best].round else ''} | "
              + " | ".join(f"{row[k]:.3f}" if k in row else "" for k in keys) + " |" for row in rows]
    create_markdown_artifact(key="iterative-rounds", markdown="# Rounds\n\n" + "\n".join(lines),
                             description="held-out scores, length and pairs by round")


def _mean_words(samples) -> float:
    return statistics.fmean(len(s.response.split()) for s in samples) if samples else 0.0

