"""The evaluate stage on transfer prompts: scripted answers (no model loads) whose checks are known by
hand, so the transfer scores, the bootstrap against base and what is written can be asserted exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_core.common.io import read_jsonl
from dpo_core.common.records import PromptRecord
from dpo_core.evaluate import stage
from dpo_core.evaluate.benchmarks.stats import paired_bootstrap
from dpo_core.evaluate.config import EvalConfig

# e-00: letter "e" 4+ times and no commas; e-01: at most 12 words, lowercase
CHECKED = [PromptRecord(r["id"], [{"role": "user", "content": r["prompt"]}], r["instructions"])
           for r in read_jsonl(Path(__file__).parent / "data" / "eval_prompts.jsonl")][:2]
TRANSFER = [
    PromptRecord("t1", [{"role": "user", "content": "Describe fog. Keep digits out of the reply entirely."}],
                 [{"kind": "no_digits", "args": {}}]),
    PromptRecord("t2", [{"role": "user", "content": "Describe snails. End on a question mark."}],
                 [{"kind": "end_with_question", "args": {}}]),
    PromptRecord("t3", [{"role": "user", "content": "Describe tea. Write at least 2 full sentences."}],
                 [{"kind": "min_sentences", "args": {"n": 2}}]),
    PromptRecord("t4", [{"role": "user", "content": "Describe kites."}]),  # no instructions: nothing scores it
]
BAD = "Bad, 123!"  # breaks every instruction above
GOOD = "here we see the trees. is it?"  # follows every instruction above


class ScriptedChat:
    """``dpo`` answers GOOD everywhere; ``sft`` answers GOOD only to the question prompt (t2); ``base``
    answers BAD everywhere. Records how many conversations each call asked for."""

    calls: list[tuple[str, int]] = []

    def __init__(self, label: str):
        self.label = label

    def complete(self, conversations, max_new_tokens):
        ScriptedChat.calls.append((self.label, len(conversations)))
        good = {"dpo": lambda text: True, "sft": lambda text: "question" in text}.get(self.label, lambda text: False)
        return [GOOD if good(c[-1]["content"]) else BAD for c in conversations]


def _write(path: Path, prompts: list[PromptRecord]) -> Path:
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prompts))
    return path


@pytest.fixture
def scripted(monkeypatch):
    ScriptedChat.calls = []
    monkeypatch.setattr(stage, "_answerer", lambda cfg, path, label: ScriptedChat(label))
    monkeypatch.setattr(stage, "release_engine", lambda: None)
    monkeypatch.setattr(stage, "load_answers", lambda path: None)  # scripted answers are not the models'
    monkeypatch.setattr(stage, "save_answers", lambda path, answers: None)


def test_transfer_scores_and_bootstrap_against_base(scripted, tmp_path):
    """Per transfer prompt with instructions (t1, t2, t3), prompt_strict is base 0, 0, 0; sft 0, 1, 0;
    dpo 1, 1, 1. So transfer/prompt_strict is 0, 1/3 and 1, and the differences from base are
    1/3 for sft (its interval from the same paired_bootstrap at 90%) and exactly 1 for dpo (every
    resample's mean is 1). On the held-out prompts sft answers BAD like base: a difference of 0."""
    eval_path, transfer_path = _write(tmp_path / "eval.jsonl", CHECKED), _write(tmp_path / "tr.jsonl", TRANSFER)
    models = {"base": "ref-base", "sft": "ref-sft", "dpo": "ref-dpo"}
    result = stage.evaluate(EvalConfig(), models, eval_path, tmp_path / "out", transfer_path=transfer_path)

    assert ScriptedChat.calls == [("base", 5), ("sft", 5), ("dpo", 5)]  # one call per model: 2 held-out + 3 transfer
    s = result.scores
    assert [s[m]["transfer/prompt_strict"] for m in models] == pytest.approx([0, 1 / 3, 1])
    assert [s[m]["transfer/instruction_loose"] for m in models] == pytest.approx([0, 1 / 3, 1])
    assert [s[m]["verifiable/prompt_strict"] for m in models] == [0, 0, 1]  # the held-out prompts only
    assert not any("_vs_base" in k for k in s["base"])
    sft_ci = paired_bootstrap([0, 1, 0], [0, 0, 0], confidence=0.9)
    assert s["sft"]["transfer/prompt_strict_vs_base_diff"] == pytest.approx(1 / 3)
    assert (s["sft"]["transfer/prompt_strict_vs_base_ci_low"], s["sft"]["transfer/prompt_strict_vs_base_ci_high"]) == (
        sft_ci["ci_low"], sft_ci["ci_high"])
    assert sft_ci["ci_low"] <= 1 / 3 <= sft_ci["ci_high"]
    assert {k: v for k, v in s["sft"].items() if k.startswith("verifiable/prompt_strict_vs")} == {
        "verifiable/prompt_strict_vs_base_ci_low": 0, "verifiable/prompt_strict_vs_base_ci_high": 0,
        "verifiable/prompt_strict_vs_base_diff": 0}
    for prefix in ("verifiable", "transfer"):
        assert [s["dpo"][f"{prefix}/prompt_strict_vs_base_{k}"] for k in ("ci_low", "diff", "ci_high")] == [1, 1, 1]

    transfer_rows = read_jsonl(result.transfer_samples_path)
    assert [(r["model"], r["prompt_id"]) for r in transfer_rows] == [(m, t) for m in models for t in ("t1", "t2", "t3")]
    assert [r["passed_strict"] for r in transfer_rows if r["model"] == "sft"] == [[False], [True], [False]]
    assert {r["prompt_id"] for r in read_jsonl(result.samples_path)} == {"e-00", "e-01"}  # the gate's file: held-out only
    assert [(r["model"], r["baseline"]) for r in result.head_to_head] == [("sft", "base"), ("dpo", "base"), ("dpo", "sft")]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["transfer_samples_path"] == result.transfer_samples_path
    assert summary["scores"]["dpo"]["transfer/prompt_strict"] == 1


def test_without_transfer_prompts_nothing_changes(scripted, tmp_path):
    result = stage.evaluate(EvalConfig(), {"dpo": "ref-dpo"}, _write(tmp_path / "eval.jsonl", CHECKED), tmp_path)
    assert ScriptedChat.calls == [("dpo", 2)] and result.transfer_samples_path is None
    assert not any(k.startswith("transfer/") or "_vs_base" in k for k in result.scores["dpo"])
    assert not (tmp_path / "transfer_samples.jsonl").exists()


def test_transfer_prompts_without_instructions_are_refused_before_any_model_runs(scripted, tmp_path):
    eval_path, transfer_path = _write(tmp_path / "eval.jsonl", CHECKED), _write(tmp_path / "tr.jsonl", TRANSFER[3:])
    cfg = EvalConfig(judge="local:x")  # a judge scores held-out answers, never transfer ones
    with pytest.raises(ValueError, match=r"none of the 1 transfer prompts has verifiable instructions"):
        stage.evaluate(cfg, {"dpo": "ref-dpo"}, eval_path, tmp_path / "out", transfer_path=transfer_path)
    assert ScriptedChat.calls == []
    assert [p.id for p in stage.transfer_prompts(EvalConfig(max_prompts=2), _write(tmp_path / "t.jsonl", TRANSFER))] == [
        "t1", "t2"]


def test_chart_draws_a_transfer_panel_without_the_differences():
    from tasks.evaluate import _bar_chart

    scores = {"base": {"verifiable/prompt_strict": 0.2, "transfer/prompt_strict": 0.1},
              "dpo": {"verifiable/prompt_strict": 0.5, "transfer/prompt_strict": 0.2,
                      "verifiable/prompt_strict_vs_base_diff": 0.3, "transfer/prompt_strict_vs_base_ci_low": -0.1}}
    axes = _bar_chart(scores).axes
    assert [ax.get_title() for ax in axes] == ["Held-out instruction following",
                                               "Transfer instruction following (unseen wordings and kinds)"]
    assert [t.get_text() for t in axes[1].get_xticklabels()] == ["transfer/prompt_strict"]
