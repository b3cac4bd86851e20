"""The whole lifecycle under a real temporary Prefect server and a temporary MLflow SQLite store,
on a tiny random model: runs, caching across flow runs, and selective re-runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.inference.config import SamplingConfig
from dpo_core.train.config import DPOConfig, SFTConfig
from tasks.plumbing import registry
from tasks.plumbing.settings import tracking_uri
from tasks.plumbing.tracking import EXPERIMENT, FLOW_TAG

DATA = Path(__file__).parent / "data"
MT_BENCH = Path(__file__).parents[1] / "configs" / "mt_bench_sample.jsonl"
STAGES = ["build-dataset", "collect-feedback", "sft", "dpo", "evaluate", "promote"]


def _params(tiny_model: str, **overrides) -> dict:
    params = {
        "model": tiny_model,
        "data": BuildConfig(source=str(DATA / "prompts.jsonl"), eval_source=str(DATA / "eval_prompts.jsonl")),
        "feedback": FeedbackConfig(sampling=SamplingConfig(num_samples=4, max_new_tokens=16, temperature=1.0)),
        "sft": SFTConfig(min_score=0.5, epochs=1),
        "dpo": DPOConfig(epochs=1, beta=0.1, eval_fraction=0.34),
        "evaluation": EvalConfig(max_new_tokens=12, judge=f"local:{tiny_model}", mt_bench_path=str(MT_BENCH),
                                 judge_max_new_tokens=8, judge_max_retries=0),
        "gate": GateConfig(registered_model="tiny-dpo"),
    }
    return params | overrides


def _child_runs(client: MlflowClient, parent_id: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_stage: dict[str, list] = {}
    for r in runs:
        by_stage.setdefault(r.data.tags["stage"], []).append(r)
    return by_stage


def _parent_runs(client: MlflowClient) -> list:
    """This module's lifecycle runs, oldest first (other test modules log other flows to the same store)."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`{FLOW_TAG}` = 'dpo-lifecycle'",
                              order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.params.get("gate.registered_model") == "tiny-dpo"]


@pytest.fixture(scope="module")
def first_run(prefect_server, tiny_model):
    from flows.lifecycle import lifecycle

    return lifecycle(**_params(tiny_model))


def test_full_flow_logs_parent_and_child_runs(first_run):
    client = MlflowClient(tracking_uri())
    parent = _parent_runs(client)[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["dpo.beta"] == "0.1"
    children = _child_runs(client, parent.info.run_id)
    assert sorted(children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for rs in children.values() for r in rs)

    dpo = children["dpo"][0]
    history = client.get_metric_history(dpo.info.run_id, "loss")
    assert len(history) >= 1 and [m.step for m in history] == list(range(1, len(history) + 1))
    for key in ["rewards/accuracies", "rewards/margins", "logps/chosen", "grad_norm", "learning_rate", "logits/chosen"]:
        assert key in dpo.data.metrics
    assert dpo.data.metrics["train_pairs"] >= 1

    for stage in ("sft", "dpo"):
        run = children[stage][0]
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
        assert len(models) == 1, stage
        local = Path(mlflow.artifacts.download_artifacts(models[0].model_uri))
        assert list(local.rglob("config.json")) and list(local.rglob("*.safetensors")), stage

    build = children["build-dataset"][0]
    assert {i.dataset.name for i in build.inputs.dataset_inputs} == {"prompts-train", "prompts-eval"}
    feedback = children["collect-feedback"][0]
    artifacts = {a.path for a in client.list_artifacts(feedback.info.run_id)}
    assert "pairs.json" in artifacts

    evaluation = children["evaluate"][0]
    metrics = evaluation.data.metrics
    for label in ("base", "sft", "dpo"):
        assert 0.0 <= metrics[f"{label}/verifiable/prompt_strict"] <= 1.0
        assert metrics[f"{label}/perplexity"] > 1.0  # on the pairs DPO held out
        assert metrics[f"{label}/mt_bench_parse_failures"] == 16  # 8 two-turn questions, a tiny judge never rates
    assert 0.0 <= metrics["dpo/preference_accuracy"] <= 1.0
    assert metrics["dpo/pairwise/parse_failures_vs_base"] >= 0
    assert {"samples.json", "scores.png", "scores.json", "judge_outputs.json"} <= {
        a.path for a in client.list_artifacts(evaluation.info.run_id)}
    report, decision = first_run
    assert set(report.scores) == {"base", "sft", "dpo"}
    # a random tiny model follows no instruction: nothing to win, so the challenger is refused
    assert decision.version == "1" and decision.baseline == "base" and not decision.promoted
    assert str(registry.alias_version("tiny-dpo", registry.CHALLENGER).version) == "1"
    assert registry.alias_version("tiny-dpo", registry.CHAMPION) is None
    promote_run = children["promote"][0]
    assert promote_run.data.tags["decision"] == "refused" and promote_run.data.metrics["promoted"] == 0.0


def test_second_run_hits_the_cache_for_every_stage(first_run, tiny_model):
    from flows.lifecycle import lifecycle

    report = lifecycle(**_params(tiny_model))
    client = MlflowClient(tracking_uri())
    parents = _parent_runs(client)
    assert len(parents) == 2
    assert _child_runs(client, parents[1].info.run_id) == {}  # no stage ran again
    assert report == first_run


def test_changed_dpo_params_rerun_dpo_and_later_against_the_champion(first_run, tiny_model):
    from flows.lifecycle import lifecycle

    registry.main(["promote", "--model", "tiny-dpo", "--version", "1"])  # a champion, by hand
    report, decision = lifecycle(**_params(tiny_model, dpo=DPOConfig(epochs=1, beta=0.5)))
    client = MlflowClient(tracking_uri())
    latest = _parent_runs(client)[-1]
    children = _child_runs(client, latest.info.run_id)
    assert sorted(children) == ["dpo", "evaluate", "promote"]
    assert report.run_id != first_run[0].run_id
    assert "champion/verifiable/prompt_strict" in children["evaluate"][0].data.metrics  # the champion was evaluated
    assert decision.baseline == "champion" and decision.version == "2" and not decision.promoted
    assert str(registry.alias_version("tiny-dpo", registry.CHAMPION).version) == "1"


def test_changed_feedback_params_rerun_feedback_and_later_stages(first_run, tiny_model):
    from flows.lifecycle import lifecycle

    sampling = dataclasses.replace(_params(tiny_model)["feedback"].sampling, seed=1)
    lifecycle(**_params(tiny_model, feedback=FeedbackConfig(sampling=sampling)))
    client = MlflowClient(tracking_uri())
    latest = _parent_runs(client)[-1]
    assert sorted(_child_runs(client, latest.info.run_id)) == sorted(STAGES[1:])


def test_stage_flows_start_from_earlier_runs(first_run, tiny_model, tmp_path):
    """Re-run only DPO with a new beta from the first lifecycle's run ids, then evaluate that model
    from run ids too; and start the feedback flow from a folder."""
    from flows.collect_feedback import collect_feedback_flow
    from flows.dpo import dpo_flow
    from flows.evaluate import evaluate_flow

    client = MlflowClient(tracking_uri())
    lifecycle_run = _parent_runs(client)[0]
    children = _child_runs(client, lifecycle_run.info.run_id)
    sft_run, feedback_run = children["sft"][0].info.run_id, children["collect-feedback"][0].info.run_id

    model = dpo_flow(model=sft_run, feedback=lifecycle_run.info.run_id,  # a lifecycle run id finds its stage
                     dpo=DPOConfig(epochs=1, beta=0.3, eval_fraction=0.34))
    dpo_run = client.get_run(model.run_id)
    assert dpo_run.data.tags["stage"] == "dpo" and dpo_run.data.params["beta"] == "0.3"
    assert dpo_run.data.tags["model_uri"] == model.model_uri and Path(model.model_path, "config.json").exists()

    report, decision = evaluate_flow(dataset=lifecycle_run.info.run_id, sft=sft_run, dpo=model.run_id,
                                     base_model=tiny_model, dpo_beta=0.3,
                                     evaluation=EvalConfig(max_new_tokens=8), gate=GateConfig(registered_model="tiny-dpo"))
    assert set(report.scores) >= {"base", "sft", "dpo"} and decision.registered_model == "tiny-dpo"

    folder = Path(client.get_run(children["build-dataset"][0].info.run_id).info.artifact_uri.removeprefix("file://"))
    pairs = collect_feedback_flow(dataset=str(folder / "dataset"), model=tiny_model,
                                  feedback=FeedbackConfig(sampling=SamplingConfig(num_samples=2, max_new_tokens=8)))
    assert pairs.run_id != feedback_run and Path(pairs.candidates_path).exists()
    with pytest.raises(ValueError, match="neither a sft run nor a lifecycle run"):
        dpo_flow(model=feedback_run, feedback=feedback_run)  # a feedback run is no sft run
