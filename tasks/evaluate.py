"""Task: evaluate base, SFT, DPO and the champion (or any models) on the held-out prompts; every metric,
tables and a chart to MLflow."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
from matplotlib.figure import Figure
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dpo_core.common.digest import digest_files, digest_json
from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.models import model_fingerprint, resolve_model
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.heldout import write_heldout
from tasks.plumbing.child import run_stage_in_child
from tasks.plumbing.results import DatasetRef, EvalReport, ModelRef
from tasks.plumbing.settings import stage_dir
from tasks.plumbing.stage import output_dir, publish, retry_transient, stage_cache
from tasks.plumbing.tracking import experiment_id, stage_run

STAGE, ENTRY = "evaluate", "dpo_core.evaluate.stage"  # ENTRY's import closure is the code version in the cache key


@task(name=STAGE, cache_policy=stage_cache(ENTRY), persist_result=True, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_transient)
def evaluate_task(
    cfg: EvalConfig, models: dict[str, ModelRef | str], data: DatasetRef, parent_run_id: str,
    timeout_s: float | None = None, dpo_beta: float = 0.1,
) -> EvalReport:
    """Every model in ``models`` (label -> a trained model, or a model reference such as the base
    model) answers the held-out prompts, and the transfer prompts if ``data`` has any, once; the
    judges score them. With a trained ``dpo`` model: its held-out pairs give perplexity and
    preference accuracy (at ``dpo_beta``)."""
    paths = {label: m if isinstance(m, str) else m.model_path for label, m in models.items()}
    keys = {label: model_fingerprint(resolve_model(m)) if isinstance(m, str) else m.digest for label, m in models.items()}
    dpo = models.get("dpo")
    heldout_pairs = dpo.eval_pairs_path if isinstance(dpo, ModelRef) else None
    out = output_dir(STAGE, ENTRY, asdict(cfg), keys, data.digest, data.transfer_path, dpo_beta)
    params = asdict(cfg) | {f"{label}_model_uri": m.model_uri for label, m in models.items() if isinstance(m, ModelRef)}
    with stage_run(STAGE, parent_run_id, params | {"models": paths}) as run_id:
        job = {"config": asdict(cfg), "inputs": {"models": paths, "eval_path": data.eval_path,
                                                  "transfer_path": data.transfer_path,
                                                  "heldout_pairs_path": heldout_pairs, "dpo_beta": dpo_beta}}
        result = run_stage_in_child("evaluate", job, out, get_run_logger().info, timeout_s)
        scores, table = result["scores"], result["head_to_head"]
        mlflow.log_metrics({f"{label}/{k}": v for label, s in scores.items() for k, v in s.items() if math.isfinite(v)})
        mlflow.log_metrics({f"win_rate/{r['model']}_vs_{r['baseline']}": r["win_rate"] for r in table})
        mlflow.log_table(pd.DataFrame(scores).T.reset_index(names="model"), "scores.json")
        mlflow.log_table(pd.DataFrame(table), "head_to_head.json")
        samples = pd.json_normalize(read_jsonl(result["samples_path"]))  # per-prompt scores as scores.<metric> columns
        mlflow.log_table(samples.astype({"passed_strict": str, "passed_loose": str}), "samples.json")
        if result["transfer_samples_path"]:
            transfer = pd.DataFrame(read_jsonl(result["transfer_samples_path"])).drop(columns="scores")
            mlflow.log_table(transfer.astype({"passed_strict": str, "passed_loose": str}), "transfer_samples.json")
        if result["judge_outputs_path"]:
            mlflow.log_table(pd.DataFrame(read_jsonl(result["judge_outputs_path"])).astype(str), "judge_outputs.json")
        mlflow.log_figure(_bar_chart(scores), "scores.png")
        mlflow.log_artifact(result["summary_path"])
        publish(STAGE, run_id, experiment_id(), _markdown(scores, table))
    return EvalReport(run_id=run_id, samples_path=result["samples_path"], scores=scores, head_to_head=table,
                      transfer_samples_path=result["transfer_samples_path"])


@task(name="heldout-prompts", cache_policy=NO_CACHE)
def heldout_prompts_task(prompts: str) -> DatasetRef:
    """A team's prompts file, in any accepted prompt shape, as held-out prompts for evaluating a model
    on it directly (rejected rows in ``rejected.jsonl`` beside it). Cheap, so never cached."""
    out = stage_dir("heldout-prompts", digest_json([prompts, digest_files([Path(prompts)])]))
    eval_path, kept, rejected = write_heldout(prompts, out)
    get_run_logger().info(f"{kept} held-out prompts from {prompts}; {rejected} rows rejected ({out / 'rejected.jsonl'})")
    train_path = write_jsonl(out / "train.jsonl", [])  # nothing to train on: this is evaluation only
    return DatasetRef(train_path=str(train_path), eval_path=str(eval_path), digest=digest_files([eval_path]), run_id="",
                      counts={"eval": kept, "rejected": rejected})


# One panel per metric family, each on its own scale; a family the evaluation did not produce is not drawn.
# The gains over base (..._vs_base_*, differences that may be negative) are in the tables, not drawn.
PANELS = (
    ("Held-out instruction following", "accuracy", (0, 1),
     lambda m: m.startswith("verifiable/") and "_vs_base" not in m),
    ("Transfer instruction following (unseen wordings and kinds)", "accuracy", (0, 1),
     lambda m: m.startswith("transfer/") and "_vs_base" not in m),
    ("Judge rating of held-out answers", "rating", (1, 10), lambda m: m == "judge/rating"),
    ("Reward of held-out answers", "mean reward", None, lambda m: m == "reward/score"),
    ("DPO win rates", "win rate (ties half)", (0, 1), lambda m: m.startswith(("pairwise/", "reward/")) and "win_rate_vs_" in m),
)


def _bar_chart(scores: dict):
    frame = pd.DataFrame(scores)  # rows: metrics, columns: models
    panels = [(title, label, ylim, frame.loc[rows].dropna(axis=1, how="all"))  # win rates: the DPO model's only
              for title, label, ylim, pick in PANELS if (rows := [m for m in frame.index if pick(m)])]
    fig = Figure(figsize=(8, 4 * max(len(panels), 1)))
    axes = fig.subplots(max(len(panels), 1), squeeze=False)[:, 0]
    if not panels:  # e.g. a judge that could not rate a single answer, on prompts without instructions
        axes[0].set_title("No held-out metric to chart")
        axes[0].axis("off")
    for ax, (title, label, ylim, rows) in zip(axes[: len(panels)], panels, strict=True):
        rows.plot.bar(ax=ax, rot=0, ylim=ylim, title=title)
        ax.set_ylabel(label)
    fig.tight_layout()
    return fig


def _markdown(scores: dict, table: list[dict]) -> str:
    metrics = sorted({k for s in scores.values() for k in s})
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{s[k]:.3f}" if k in s else "" for k in metrics) + " |" for m, s in scores.items()]
    if table:
        lines += ["", "| model | baseline | wins | ties | losses | win rate |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['baseline']} | {r['wins']} | {r['ties']} | {r['losses']} | {r['win_rate']:.3f} |"
                  for r in table]
    return "\n".join(lines)
