"""Evaluation and promotion on a team's own prompts, without verifiable instructions: the real stage on
tiny models with a local LLM judge (which cannot rate: its failures are counted) or a reward model,
a scripted judge for exact ratings and verdicts, a mixed set, the refusal of a set nothing can score,
and the report and chart when there are no verifiable metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_core.common.io import read_jsonl
from dpo_core.common.records import EvalSample, PromptRecord
from dpo_core.evaluate import stage
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig, decide
from dpo_core.evaluate.heldout import load_prompts
from dpo_core.evaluate.scores import judge_scores
from dpo_core.judges.reward_model import RewardModelJudge

GENERIC = [PromptRecord(f"g-{i}", [{"role": "user", "content": t}]) for i, t in enumerate(
    ["Explain TCP slow start.", "What is a hash map good for?", "Why do B-trees suit disks?"])]
CHECKED = [PromptRecord(r["id"], [{"role": "user", "content": r["prompt"]}], r["instructions"])  # two with instructions
           for r in read_jsonl(Path(__file__).parent / "data" / "eval_prompts.jsonl")][:2]


def _write(path: Path, prompts: list[PromptRecord]) -> Path:
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in prompts))
    return path


def _generic(tmp_path: Path) -> Path:
    return _write(tmp_path / "eval.jsonl", GENERIC)


def _samples(result) -> dict[str, list[EvalSample]]:
    """samples.jsonl read back the way the promote task reads it."""
    samples: dict[str, list[EvalSample]] = {}
    for row in read_jsonl(result.samples_path):
        row.pop("prompt_pass")
        samples.setdefault(row["model"], []).append(EvalSample(**row))
    return samples


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """A second tiny policy with other weights, so the DPO model's answers differ from the base model's."""
    from tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1))


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    from tiny import make_tiny_reward_model

    return str(make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "model"))


def test_generic_prompts_with_a_local_judge_count_parse_failures_and_end_in_a_decision(tiny_model, other_model, tmp_path,
                                                                                     monkeypatch):
    """A tiny random judge never writes a rating or a verdict: every answer's grade and every
    comparison is a counted parse failure, no mean is invented, each prompt is answered once per
    model (the same weights once), and the gate still decides (no rating on both sides: not promoted)."""
    asked = []
    answerer = stage._answerer

    def counting_answerer(cfg, path, label):
        chat = answerer(cfg, path, label)
        complete = chat.complete
        chat.complete = lambda convs, max_new_tokens: asked.append(len(convs)) or complete(convs, max_new_tokens)
        return chat

    monkeypatch.setattr(stage, "_answerer", counting_answerer)
    cfg = EvalConfig(max_new_tokens=8, judge=f"local:{tiny_model}", judge_max_new_tokens=8, judge_max_retries=0)
    result = stage.evaluate(cfg, {"base": tiny_model, "sft": tiny_model, "dpo": other_model}, _generic(tmp_path), tmp_path)
    assert asked == [3, 3]  # one per prompt and model; base and sft are the same weights, answered once
    for label in ("base", "sft", "dpo"):
        assert result.scores[label]["judge/parse_failures"] == 3 and result.scores[label]["judge/parse_failure_rate"] == 1
        assert "judge/rating" not in result.scores[label] and not any(k.startswith("verifiable/") for k in result.scores[label])
    dpo = result.scores["dpo"]
    assert dpo["pairwise/parse_failures_vs_base"] == 3 and "pairwise/win_rate_vs_base" not in dpo
    assert result.head_to_head == []  # no instructions: no verifiable head-to-head table
    samples = _samples(result)
    assert [s.scores for s in samples["base"]] == [{"judge/rating": None}] * 3
    assert [s.scores for s in samples["dpo"]] == [{"judge/rating": None, "pairwise/win_rate_vs_base": None}] * 3
    kinds = [r["kind"] for r in read_jsonl(result.judge_outputs_path)]
    assert kinds.count("rating") == 9 and kinds.count("pairwise") == 3
    decision = decide(samples["dpo"], samples["base"], GateConfig())
    assert not decision.promote and decision.primary_metric == "judge/rating"
    assert "no prompt has a score for both" in decision.reasons[0]


class ScriptedJudge:
    """Rates an answer 9 if it is "detailed", else 4; prefers a detailed answer in a comparison, and
    when neither is, always picks answer B (a position bias the second order exposes)."""

    name = "scripted"

    def run(self, conversations, max_new_tokens, on_done):
        for i, conversation in enumerate(conversations):
            text = conversation[-1]["content"]
            if "### Answer A:" in text:
                a = text.split("### Answer A:")[1].split("### Answer B:")[0]
                on_done(i, "A is better. [[A]]" if "detailed" in a else "[[B]]")
            else:
                on_done(i, "Rating: [[9]]" if "detailed" in text.split("### Assistant:")[-1] else "Meh. [[4]]")


def test_judge_scores_rate_each_answer_and_compare_the_dpo_model_in_both_orders():
    """Ratings: base 4, 4, 4 -> 4; DPO 9, 9, 4 -> 22/3. Pairwise against base: a detailed DPO answer
    wins in both orders (1, 1); on the third prompt neither answer is detailed and the judge picks B
    in both orders, which flips with the order: a tie (0.5) and one position disagreement in three.
    Win rate (1 + 1 + 0.5) / 3."""
    answers = {"base": ["short"] * 3, "dpo": ["a detailed answer", "another detailed one", "short too"]}
    metrics, per_prompt, rows = judge_scores(ScriptedJudge(), GENERIC, answers, ["base"], max_retries=0, max_new_tokens=8)
    assert metrics["base"] == {"judge/parse_failures": 0.0, "judge/parse_failure_rate": 0.0, "judge/rating": 4.0}
    assert metrics["dpo"]["judge/rating"] == pytest.approx(22 / 3)
    assert metrics["dpo"]["pairwise/win_rate_vs_base"] == pytest.approx(2.5 / 3)
    assert metrics["dpo"]["pairwise/position_disagreement_vs_base"] == pytest.approx(1 / 3)
    assert metrics["dpo"]["pairwise/parse_failures_vs_base"] == 0 and 0 <= metrics["dpo"]["pairwise/lc_win_rate_vs_base"] <= 1
    assert per_prompt["dpo"] == [{"judge/rating": 9.0, "pairwise/win_rate_vs_base": 1.0},
                                 {"judge/rating": 9.0, "pairwise/win_rate_vs_base": 1.0},
                                 {"judge/rating": 4.0, "pairwise/win_rate_vs_base": 0.5}]
    assert per_prompt["base"] == [{"judge/rating": 4.0}] * 3 and len(rows) == 6 + 3


def test_generic_prompts_with_a_reward_model(tiny_model, other_model, reward_model, tmp_path):
    """The mean reward is the mean of the per-prompt rewards, which are the reward model's own; the DPO
    model gives the base model's answers (same weights), so every prompt ties: reward win rate exactly
    0.5 against base, and the gate (defaulting to the mean reward) sees a difference of 0."""
    cfg = EvalConfig(max_new_tokens=8, reward_model=reward_model, win_rate_baselines=["base", "sft"])
    result = stage.evaluate(cfg, {"base": tiny_model, "sft": other_model, "dpo": tiny_model}, _generic(tmp_path), tmp_path)
    samples = _samples(result)
    direct = RewardModelJudge(reward_model).rewards([p.messages + [{"role": "assistant", "content": s.response}]
                                                     for p, s in zip(GENERIC, samples["sft"], strict=True)])
    assert [s.scores["reward/score"] for s in samples["sft"]] == pytest.approx(direct, abs=1e-5)
    for label in ("base", "sft", "dpo"):
        rewards = [s.scores["reward/score"] for s in samples[label]]
        assert result.scores[label]["reward/score"] == pytest.approx(sum(rewards) / 3)
    assert [s.scores["reward/win_rate_vs_base"] for s in samples["dpo"]] == [0.5] * 3
    expected = [1.0 if d > s else 0.5 if d == s else 0.0 for d, s in zip(
        [s.scores["reward/score"] for s in samples["dpo"]], [s.scores["reward/score"] for s in samples["sft"]], strict=True)]
    assert [s.scores["reward/win_rate_vs_sft"] for s in samples["dpo"]] == expected
    assert result.scores["dpo"]["reward/win_rate_vs_sft"] == pytest.approx(sum(expected) / 3)
    decision = decide(samples["dpo"], samples["base"], GateConfig())
    assert decision.primary_metric == "reward/score" and decision.bootstrap["mean_diff"] == 0 and not decision.promote
    assert "the reward model scored every answer" in decision.reasons[0]
    on_wins = decide(samples["dpo"], samples["base"], GateConfig(primary_metric="reward/win_rate"))
    assert on_wins.scores["challenger"]["reward/win_rate"] == 0.5 and not on_wins.promote


def test_a_mixed_set_gets_verifiable_metrics_over_its_prompts_with_instructions(tiny_model, reward_model, tmp_path):
    """Two prompts with instructions and three without: verifiable metrics and the head-to-head table
    count only the two; the reward scores all five; no division by zero anywhere."""
    path = _write(tmp_path / "eval.jsonl", CHECKED + GENERIC)
    cfg = EvalConfig(max_new_tokens=8, reward_model=reward_model)
    result = stage.evaluate(cfg, {"base": tiny_model, "dpo": tiny_model}, path, tmp_path)
    samples = _samples(result)
    checked = [s for s in samples["dpo"] if s.passed_strict]
    assert [s.prompt_id for s in checked] == ["e-00", "e-01"] and len(samples["dpo"]) == 5
    assert result.scores["dpo"]["verifiable/prompt_strict"] == sum(all(s.passed_strict) for s in checked) / 2
    assert all("reward/score" in s.scores for s in samples["dpo"])
    assert [r["wins"] + r["ties"] + r["losses"] for r in result.head_to_head] == [2]
    decision = decide(samples["dpo"], samples["base"], GateConfig())
    assert decision.primary_metric == "verifiable/prompt_strict" and decision.bootstrap["n"] == 2
    assert "(3 left out)" in decision.reasons[0] and decision.reasons[1].startswith("guard verifiable/instruction_loose")


def test_prompts_nothing_can_score_are_refused_before_any_model_runs(tmp_path):
    with pytest.raises(ValueError, match=r"none of the 3 held-out prompts has verifiable instructions.*"
                                         r"evaluation\.judge=.*evaluation\.reward_model="):
        stage.evaluate(EvalConfig(), {"base": "/no/such/model"}, _generic(tmp_path), tmp_path)  # never loaded
    mixed = _write(tmp_path / "mixed.jsonl", CHECKED + GENERIC)
    assert [p.id for p in load_prompts(EvalConfig(), mixed)] == ["e-00", "e-01"]  # nothing would score the rest
    assert len(load_prompts(EvalConfig(judge="local:x"), mixed)) == 5


def test_report_and_chart_without_verifiable_metrics(capsys):
    from flows.report import print_report
    from tasks.evaluate import _bar_chart, _markdown
    from tasks.plumbing.results import EvalReport, PromotionDecision

    scores = {"base": {"judge/rating": 4.0, "judge/parse_failures": 1.0},
              "dpo": {"judge/rating": 7.0, "judge/parse_failures": 0.0, "pairwise/win_rate_vs_base": 0.8}}
    assert [ax.get_title() for ax in _bar_chart(scores).axes] == ["Judge rating of held-out answers", "DPO win rates"]
    assert [ax.get_title() for ax in _bar_chart({"base": {"judge/parse_failures": 3.0}}).axes] == ["No held-out metric to chart"]
    assert "| dpo |" in _markdown(scores, []) and "baseline" not in _markdown(scores, [])
    decision = PromotionDecision(registered_model="m", version="1", baseline="base", promoted=True, reasons=["..."])
    print_report(EvalReport(run_id="r", samples_path="s", scores=scores, head_to_head=[]), decision)
    out = capsys.readouterr().out
    assert "Held-out answers judged" in out and "pairwise/win_rate_vs_base" in out and "0.800" in out
    assert "instruction following" not in out and "Head to head" not in out
