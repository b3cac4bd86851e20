"""Pairwise judging in both orders (MT-Bench's remedy for position bias) and win rates.

The judge sees the question and two answers and answers ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie).
Each pair is asked twice with the answers swapped; a model wins only if both orders agree,
disagreement counts as a tie. Unparseable verdicts after retries are counted and left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpo_core.benchmarks.stats import length_controlled_win_rate, win_rate
from dpo_core.judges.parsing import parse_verdict

PROMPT_VERSION = "pairwise-v1"

_SYSTEM = ("You compare two AI assistant answers to the same user question. Consider which answer follows "
           "the user's instructions better and is more helpful and accurate; ignore length and order. Explain "
           "briefly, then output your verdict in exactly this format: [[A]] if answer A is better, [[B]] if "
           "answer B is better, [[C]] for a tie.")


@dataclass(frozen=True)
class Comparison:
    prompt_id: str
    outcome: float | None  # for the model: 1 win, 0.5 tie, 0 loss, None unparseable
    verdict_model_first: str | None
    verdict_model_second: str | None
    length_diff: int  # characters, model minus baseline
    judge_texts: tuple[str, str]


def _prompt(question: str, a: str, b: str) -> list[dict]:
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": f"### Question:\n{question}\n\n### Answer A:\n{a}\n\n### Answer B:\n{b}"}]


def _ask(judge, prompts: list[list[dict]], max_retries: int, max_new_tokens: int) -> list[tuple[str | None, str]]:
    results: list[tuple[str | None, str]] = [(None, "")] * len(prompts)
    pending = list(range(len(prompts)))
    for _ in range(max_retries + 1):
        if not pending:
            break
        for i, text in zip(pending, judge.complete([prompts[i] for i in pending], max_new_tokens), strict=True):
            results[i] = (parse_verdict(text), text)
        pending = [i for i in pending if results[i][0] is None]
    return results


_AS_FIRST = {"A": 1.0, "B": 0.0, "C": 0.5}  # the model's score when it was answer A
_AS_SECOND = {"B": 1.0, "A": 0.0, "C": 0.5}  # ... when it was answer B


def outcome(first: str | None, second: str | None) -> float | None:
    """``first``: verdict with the model as A; ``second``: with the model as B. Orders that
    disagree make a tie."""
    if first is None or second is None:
        return None
    return _AS_FIRST[first] if _AS_FIRST[first] == _AS_SECOND[second] else 0.5


def compare(judge, items: list[tuple[str, str, str, str]], max_retries: int = 2,
            max_new_tokens: int = 256) -> list[Comparison]:
    """``items``: (prompt_id, question, model_answer, baseline_answer)."""
    first = _ask(judge, [_prompt(q, m, b) for _, q, m, b in items], max_retries, max_new_tokens)
    second = _ask(judge, [_prompt(q, b, m) for _, q, m, b in items], max_retries, max_new_tokens)
    return [Comparison(pid, outcome(f[0], s[0]), f[0], s[0], len(m) - len(b), (f[1], s[1]))
            for (pid, _, m, b), f, s in zip(items, first, second, strict=True)]


def summarize(comparisons: list[Comparison]) -> dict[str, float]:
    judged = [c for c in comparisons if c.outcome is not None]
    outcomes = [c.outcome for c in judged]
    both = [c for c in comparisons if c.verdict_model_first and c.verdict_model_second]
    disagree = sum(_AS_FIRST[c.verdict_model_first] != _AS_SECOND[c.verdict_model_second] for c in both)
    counts = {"pairwise_parse_failures": float(len(comparisons) - len(judged)),
              "pairwise_position_disagreement": disagree / max(len(both), 1)}
    if not outcomes:  # nothing judged: no rate to report
        return counts
    return counts | {"pairwise_win_rate": win_rate(outcomes),
                     "pairwise_lc_win_rate": length_controlled_win_rate(outcomes, [c.length_diff for c in judged])}
