"""Task: register the DPO model as challenger and promote it only if it beats the champion."""

from __future__ import annotations

import json
from dataclasses import asdict

import mlflow
from prefect import task

from dpo_core.common.io import read_jsonl
from dpo_core.common.records import EvalSample
from dpo_core.evaluate.gate import GateConfig, decide
from tasks.plumbing.registry import promote, register_challenger
from tasks.plumbing.results import EvalReport, ModelRef, PromotionDecision
from tasks.plumbing.stage import publish, stage_cache
from tasks.plumbing.tracking import experiment_id, stage_run

STAGE, ENTRY = "promote", "dpo_core.evaluate.gate"  # ENTRY's import closure is the code version in the cache key


@task(name=STAGE, cache_policy=stage_cache(ENTRY), persist_result=True)
def promote_task(gate: GateConfig, dpo: ModelRef, report: EvalReport, parent_run_id: str) -> PromotionDecision:
    samples: dict[str, list[EvalSample]] = {}
    for row in read_jsonl(report.samples_path):
        samples.setdefault(row["model"], []).append(EvalSample.from_dict(row))
    baseline = "champion" if "champion" in samples else "base"
    with stage_run(STAGE, parent_run_id, asdict(gate) | {"baseline": baseline}) as run_id:
        decision = decide(samples["dpo"], samples[baseline], gate)  # first: a metric the evaluation lacks registers nothing
        version = register_challenger(gate.registered_model, dpo.model_uri, dpo.run_id)
        if decision.promote:
            promote(gate.registered_model, version, "; ".join(decision.reasons))
        mlflow.log_metrics({"promoted": float(decision.promote)}
                           | {f"bootstrap/{k}": v for k, v in decision.bootstrap.items()})
        mlflow.set_tags({"registered_model": gate.registered_model, "model_version": version,
                         "primary_metric": decision.primary_metric,
                         "decision": "promoted" if decision.promote else "refused"})
        mlflow.log_text(json.dumps(asdict(decision), indent=2), "decision.json")
        verdict = "promoted to **champion**" if decision.promote else "**not promoted**"
        publish(STAGE, run_id, experiment_id(),
                f"`{gate.registered_model}` version {version} (challenger) vs {baseline}: {verdict}\n\n"
                + "\n".join(f"- {r}" for r in decision.reasons))
    return PromotionDecision(registered_model=gate.registered_model, version=version, baseline=baseline,
                             promoted=decision.promote, reasons=decision.reasons)
