"""A team's own data through the whole lifecycle, under the real Prefect server and MLflow store, on
tiny models: SFT chats with generic prompts, pairs alone, and a base model given a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dpo_core.common.io import write_jsonl
from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.inference.config import SamplingConfig
from dpo_core.train.config import DPOConfig, SFTConfig
from tasks.plumbing.settings import tracking_uri
from tasks.plumbing.tracking import EXPERIMENT, FLOW_TAG

TOPICS = ["TCP slow start", "photosynthesis", "binary search", "the water cycle", "compound interest", "DNS caching",
          "garbage collection", "plate tectonics", "public-key encryption", "the Krebs cycle", "load balancing",
          "inflation", "gradient descent", "tides", "vaccines", "hash tables"]


def _chats(path: Path) -> Path:
    """UltraChat-style conversations, some with two assistant turns."""
    rows = []
    for i, topic in enumerate(TOPICS[:8]):
        messages = [{"role": "user", "content": f"Explain {topic} briefly."},
                    {"role": "assistant", "content": f"{topic.capitalize()} in short: it is a well studied idea."}]
        if i % 2:
            messages += [{"role": "user", "content": "And why does it matter?"},
                         {"role": "assistant", "content": "Because many systems depend on it."}]
        rows.append({"messages": messages})
    return write_jsonl(path, rows)


def _prompts(path: Path) -> Path:
    """Generic prompts, no verifiable instructions."""
    return write_jsonl(path, [{"prompt": f"What should a beginner know about {t}?"} for t in TOPICS[8:]])


def _trl_pairs(path: Path) -> Path:
    """TRL's conversational preference format."""
    return write_jsonl(path, [
        {"prompt": [{"role": "user", "content": f"Describe {t} in one sentence."}],
         "chosen": [{"role": "assistant", "content": f"{t.capitalize()} is explained clearly here."}],
         "rejected": [{"role": "assistant", "content": "No idea."}]} for t in TOPICS])


def _runs(client: MlflowClient, registered_model: str) -> dict[str, list]:
    """The child runs of the newest lifecycle run that used ``registered_model``, by stage."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    parents = [r for r in client.search_runs([exp.experiment_id], f"tags.`{FLOW_TAG}` = 'dpo-lifecycle'",
                                             order_by=["attributes.start_time DESC"])
               if r.data.params.get("gate.registered_model") == registered_model]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    by_stage: dict[str, list] = {}
    for run in children:
        by_stage.setdefault(run.data.tags["stage"], []).append(run)
    return by_stage


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    from tiny import make_tiny_reward_model

    return str(make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "model"))


def _settings(reward_model: str, registered_model: str) -> dict:
    return {
        "feedback": FeedbackConfig(judge=f"reward:{reward_model}",
                                   sampling=SamplingConfig(num_samples=2, max_new_tokens=12, temperature=1.0)),
        "sft": SFTConfig(epochs=1, batch_size=4),
        "dpo": DPOConfig(epochs=1, batch_size=4),
        "evaluation": EvalConfig(max_new_tokens=12, reward_model=reward_model),
        "gate": GateConfig(registered_model=registered_model),
    }


def test_sft_chats_and_generic_prompts_run_sft_first_then_feedback_and_end_in_a_decision(
        prefect_server, tiny_model, reward_model, tmp_path):
    from flows.lifecycle import lifecycle

    data = BuildConfig(source=str(_prompts(tmp_path / "prompts.jsonl")), sft_source=str(_chats(tmp_path / "chats.jsonl")),
                       eval_fraction=0.25)
    report, decision = lifecycle(model=tiny_model, data=data, **_settings(reward_model, "own-chats"))

    runs = _runs(MlflowClient(tracking_uri()), "own-chats")
    assert {"build-dataset", "sft", "collect-feedback", "dpo", "evaluate", "promote"} <= set(runs)
    assert all(r.info.status == "FINISHED" for rs in runs.values() for r in rs)
    sft, feedback, dpo = runs["sft"][0], runs["collect-feedback"][0], runs["dpo"][0]
    assert sft.info.start_time < feedback.info.start_time  # SFT on the chats first, then sample from it
    assert sft.data.metrics["examples_conversations"] == 8
    assert feedback.data.params["model"].endswith("/model")  # the SFT model answered, not the base
    assert feedback.data.metrics["feedback/pairs"] >= 1 and dpo.data.metrics["train_pairs"] >= 1
    assert {"base", "sft", "dpo"} <= set(report.scores)
    assert all("reward/score" in scores for scores in report.scores.values())
    assert not any(k.startswith("verifiable/") for k in report.scores["dpo"])  # generic prompts: no checkers
    assert decision.reasons and "reward/score" in decision.reasons[0]


def test_pairs_alone_train_sft_on_the_chosen_side_then_dpo(prefect_server, tiny_model, reward_model, tmp_path):
    from flows.lifecycle import lifecycle

    data = BuildConfig(source=str(_trl_pairs(tmp_path / "pairs.jsonl")), eval_fraction=0.25)
    report, decision = lifecycle(model=tiny_model, data=data, **_settings(reward_model, "own-pairs"))

    runs = _runs(MlflowClient(tracking_uri()), "own-pairs")
    assert "collect-feedback" not in runs  # no prompts to sample for: the team's pairs are the data
    build, sft, dpo = runs["build-dataset"][0], runs["sft"][0], runs["dpo"][0]
    assert build.data.params["kind/source"] == "pairs"
    assert build.data.metrics["rows/pairs"] == 12 and build.data.metrics["rows/held_out_from_pairs"] == 4
    assert sft.data.metrics["examples_chosen"] == 12
    assert dpo.data.metrics["train_pairs"] == 12
    assert set(report.scores) >= {"base", "sft", "dpo"}
    assert isinstance(decision.promoted, bool)


def test_a_base_model_runs_with_the_chat_template_setting_and_fails_fast_without(
        prefect_server, reward_model, tmp_path):
    from tiny import make_tiny_base_model

    from flows.lifecycle import lifecycle

    base = str(make_tiny_base_model(tmp_path / "base"))
    data = BuildConfig(source=str(_trl_pairs(tmp_path / "pairs.jsonl")), eval_fraction=0.25)
    settings = _settings(reward_model, "own-base")
    with pytest.raises(Exception, match="chat_template") as failed:
        lifecycle(model=base, data=data, **settings)
    assert "sft" not in _runs(MlflowClient(tracking_uri()), "own-base")  # stopped before any training
    assert "prepare-model" in str(failed.value)

    report, _ = lifecycle(model=base, data=data, chat_template="chatml", **settings)
    sft = _runs(MlflowClient(tracking_uri()), "own-base")["sft"][0]
    templated = Path(sft.data.params["model"])
    assert templated != Path(base) and (templated / "config.json").exists()
    assert "<|im_start|>" in (templated / "chat_template.jinja").read_text()
    assert "<|im_start|>" in json.loads((templated / "tokenizer_config.json").read_text())["extra_special_tokens"]
    assert "dpo" in report.scores
