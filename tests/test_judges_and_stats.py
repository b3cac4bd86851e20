"""Judge-output parsing in its usual slips, win rates with ties, length control, bootstrap
intervals, and MT-Bench grading end to end with a real (tiny, hence unhelpful) local judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dpo_core.evaluate.benchmarks import mt_bench, pairwise
from dpo_core.evaluate.benchmarks.stats import length_controlled_win_rate, paired_bootstrap, win_rate
from dpo_core.inference.backends import LocalChat, OpenAIChat, make_backend
from dpo_core.inference.config import ClientOptions
from dpo_core.judges.parsing import parse_rating, parse_verdict

SAMPLE = Path(__file__).parents[1] / "configs" / "mt_bench_sample.jsonl"


@pytest.mark.parametrize(("text", "expected"), [
    ("The answer is correct and clear. Rating: [[8]]", 8.0),
    ("Good. [[7.5]]", 7.5),
    ("Mostly right.\n\n**Rating: [[6]]**.", 6.0),
    ("Rating: [9]", 9.0),  # single brackets
    ("I would give it a rating of 4/10.", 4.0),  # no brackets at all
    ("Rating: [[8]] ... to repeat, [[8]]", 8.0),  # repeated, consistent
    ("First I thought [[3]] but then [[7]]", None),  # contradictory
    ("Rating: [[11]]", None),  # out of range
    ("Rating: [[0]]", None),
    ("The answer is fine.", None),
    ("", None),
])
def test_parse_rating(text, expected):
    rating, problem = parse_rating(text)
    assert rating == expected and bool(problem) == (expected is None)  # a refusal names what to fix


@pytest.mark.parametrize(("text", "expected"), [
    ("A is more helpful. [[A]]", "A"),
    ("Both fine: [[C]]", "C"),
    ("Verdict: [B]", "B"),
    ("[[A]] ... final verdict [[A]]", "A"),
    ("[[A]] or maybe [[B]]", None),
    ("Assistant A wins.", None),
])
def test_parse_verdict(text, expected):
    verdict, problem = parse_verdict(text)
    assert verdict == expected and bool(problem) == (expected is None)


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("A", "B", 1.0),  # model wins in both orders
    ("B", "A", 0.0),  # loses in both
    ("A", "A", 0.5),  # position bias: the judge always picks the first answer -> tie
    ("C", "C", 0.5),
    ("A", "C", 0.5),
    (None, "B", None),
])
def test_pairwise_outcome_both_orders(first, second, expected):
    assert pairwise.outcome(first, second) == expected


def test_win_rate_counts_ties_half():
    assert win_rate([1, 1, 0.5, 0]) == pytest.approx(0.625)


def test_length_control_removes_a_pure_length_effect():
    # The model wins exactly when its answer is longer: raw win rate 0.75, but at equal length
    # the fit says it is no better than a coin.
    rng = np.random.default_rng(0)
    diffs = rng.normal(0, 500, 4000)
    diffs[:2000] = np.abs(diffs[:2000]) + 100  # 3/4 of the answers are longer
    outcomes = (rng.random(4000) < 1 / (1 + np.exp(-diffs / 100))).astype(float)
    assert win_rate(outcomes) > 0.7
    assert length_controlled_win_rate(outcomes, diffs) == pytest.approx(0.5, abs=0.05)


def test_length_control_keeps_a_real_advantage():
    outcomes = [1.0] * 70 + [0.5] * 20 + [0.0] * 10
    lc = length_controlled_win_rate(outcomes, [0.0] * 100)  # equal lengths: LC equals the raw rate
    assert lc == pytest.approx(win_rate(outcomes), abs=1e-3)


def test_paired_bootstrap_interval():
    a = [1.0] * 60 + [0.0] * 40
    b = [0.0] * 60 + [0.0] * 40  # a better on 60 of 100 items
    r = paired_bootstrap(a, b, resamples=4000, confidence=0.9)
    assert r["mean_diff"] == pytest.approx(0.6)
    # binomial: sd of the mean = sqrt(0.6 * 0.4 / 100) = 0.049; 90% interval ~ 0.6 +- 0.081
    assert r["ci_low"] == pytest.approx(0.519, abs=0.02) and r["ci_high"] == pytest.approx(0.681, abs=0.02)
    same = paired_bootstrap(a, a)
    assert same["ci_low"] == same["ci_high"] == 0.0
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_mt_bench_questions_validate(tmp_path):
    questions = mt_bench.load_questions(SAMPLE)
    assert len(questions) == 8 and all(len(q.turns) == 2 for q in questions)
    assert questions[2].reference == ["102", "(102 + 38) / 10 = 14"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "x", "turns": ["a", "b"], "reference": ["only one"]}\n')
    with pytest.raises(ValueError, match="one answer per turn"):
        mt_bench.load_questions(bad)


def test_mt_bench_judge_prompt_carries_reference_and_dialogue():
    q = mt_bench.load_questions(SAMPLE)[2]
    messages = mt_bench.judge_prompt(q, ["It is 102.", "It is 14."], turn=1)
    text = messages[-1]["content"]
    assert "(102 + 38) / 10 = 14" in text and "It is 102." in text and "It is 14." in text
    assert "[[rating]]" in messages[0]["content"]


class ScriptedJudge(LocalChat):
    """A judge backend that answers ``bad`` first and, once told what was wrong, ``good``."""

    def __init__(self, bad: str, good: str):
        super().__init__(None, None, "scripted")
        self.bad, self.good, self.asked = bad, good, []

    def run(self, conversations, max_new_tokens, on_done):
        self.asked.append(conversations)
        for i, conversation in enumerate(conversations):
            on_done(i, self.good if conversation[-1]["content"].startswith("Your answer could not be read") else self.bad)


def test_mt_bench_grading_reasks_with_the_problem_named():
    """The re-ask shows the judge its own answer and what is wrong with it, so a judge that can follow
    the format recovers the grade (the same prompt again, greedily, would repeat the failure)."""
    judge = ScriptedJudge("A fine answer, I would say seven.", "A fine answer. [[7]]")
    questions = mt_bench.load_questions(SAMPLE)[:2]
    grades = mt_bench.grade(judge, "m", questions, [["a1", "a2"], ["b1", "b2"]], max_retries=2, max_new_tokens=8)
    assert [len(convs) for convs in judge.asked] == [4, 4]  # every turn answered badly once, then recovered
    first, again = judge.asked[0][0], judge.asked[1][0]
    assert again[: len(first)] == first and again[-2] == {"role": "assistant", "content": judge.bad}
    assert "no rating in the form [[rating]]" in again[-1]["content"]
    assert [g.rating for g in grades] == [7.0] * 4 and {g.judge_text for g in grades} == {judge.good}
    assert mt_bench.summarize(grades) == {"parse_failures": 0.0, "parse_failure_rate": 0.0, "rating": 7.0}


def test_mt_bench_grading_counts_parse_failures(tiny_model):
    """A tiny random judge never writes a rating: every turn is re-asked, with the problem named,
    ``max_retries`` times, then counted as failed."""
    chat = LocalChat.from_ref(tiny_model)
    questions = mt_bench.load_questions(SAMPLE)[:2]
    answers = mt_bench.answer(chat, questions, max_new_tokens=8)
    assert [len(a) for a in answers] == [2, 2]
    asked, said = [], []
    original = chat.run
    chat.run = lambda convs, n, on_done: asked.append(convs) or original(
        convs, n, lambda i, answer: said.append(answer) or on_done(i, answer))
    grades = mt_bench.grade(chat, "tiny", questions, answers, max_retries=2, max_new_tokens=8)
    assert [len(convs) for convs in asked] == [4, 4, 4]  # first try, then two re-asks of the 4 unparseable turns
    assert [len(c) for c in asked[2]] == [6] * 4 and all("could not be read" in c[-1]["content"] for c in asked[2])
    assert {g.judge_text for g in grades} <= set(said[-4:])  # the judge's last answers are kept
    summary = mt_bench.summarize(grades)
    assert summary == {"parse_failures": 4, "parse_failure_rate": 1.0}  # no rating: nothing was rated


def test_pairwise_compare_reasks_with_the_problem_named():
    judge = ScriptedJudge("Both have merit.", "B is more accurate. [[B]]")
    comparisons = pairwise.compare(judge, [("p1", "Name a colour.", "red", "a dog")], max_retries=1, max_new_tokens=8)
    assert [len(convs) for convs in judge.asked] == [2, 2]  # both orders, each re-asked once
    assert all("no verdict in the form [[A]], [[B]] or [[C]]" in c[-1]["content"] for c in judge.asked[1])
    (c,) = comparisons
    assert (c.verdict_model_first, c.verdict_model_second, c.outcome) == ("B", "B", 0.5)  # orders disagree: a tie
    assert c.judge_texts == (judge.good, judge.good)
    stubborn = ScriptedJudge("Both have merit.", "Still both.")
    (failed,) = pairwise.compare(stubborn, [("p1", "Name a colour.", "red", "a dog")], max_retries=1, max_new_tokens=8)
    assert failed.outcome is None and failed.judge_texts == ("Still both.", "Still both.")
    assert pairwise.summarize([failed])["parse_failures"] == 1


def test_openai_backend_keeps_the_key_out_of_repr(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    backend = OpenAIChat("http://127.0.0.1:9/v1", "judge-model", ClientOptions(api_key_env="MY_JUDGE_KEY"))
    assert backend.client.api_key == "sk-secret-123"
    assert "sk-secret" not in repr(backend) and "sk-secret" not in repr(backend.client)
    with pytest.raises(ValueError, match="openai:<base_url>"):
        make_backend("openai:http://x")


def test_pairwise_summary_counts_position_disagreement():
    def comp(first, second, diff=0):
        return pairwise.Comparison("p", pairwise.outcome(first, second), first, second, diff, ("", ""))

    summary = pairwise.summarize([comp("A", "B"), comp("A", "A"), comp("C", "A"), comp("C", "C"), comp(None, "A")])
    assert summary["parse_failures"] == 1
    assert summary["position_disagreement"] == pytest.approx(2 / 4)  # (A, A) and (C, A)
    assert summary["win_rate"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)
    assert "win_rate" not in pairwise.summarize([comp(None, None)])
