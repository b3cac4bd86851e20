"""Pairwise judging in both orders (MT-Bench's remedy for position bias) and win rates.

The judge sees the question and two answers and answers ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie).
Each pair is asked twice with the answers swapped; a model wins only if both orders agree,
disagreement counts as a tie. Unparseable verdicts after re-asks are counted and left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpo_core.evaluate.benchmarks.stats import length_controlled_win_rate, win_rate
from dpo_core.judges.asking import ask_all
from dpo_core.judges.pairwise import AS_FIRST, AS_SECOND, PROMPT_VERSION, outcome, pairwise_prompt
from dpo_core.judges.parsing import parse_verdict

__all__ = ["PROMPT_VERSION", "Comparison", "compare", "outcome", "summarize"]


@dataclass(frozen=True)
class Comparison:
    prompt_id: str
    outcome: float | None  # for the model: 1 win, 0.5 tie, 0 loss, None unparseable
    verdict_model_first: str | None
    verdict_model_second: str | None
    length_diff: int  # characters, model minus baseline
    judge_texts: tuple[str, str]  # the judge's last answer in each order


def compare(judge, items: list[tuple[str, str, str, str]], max_retries: int = 2,
            max_new_tokens: int = 256) -> list[Comparison]:
    """``items``: (prompt_id, question, model_answer, baseline_answer); a verdict the judge does not
    give readably is asked again with the problem named (dpo_core.judges.asking)."""
    prompts = [pairwise_prompt(q, m, b) for _, q, m, b in items] + [pairwise_prompt(q, b, m) for _, q, m, b in items]
    results = ask_all(judge, prompts, parse_verdict, max_retries, max_new_tokens)
    first, second = results[: len(items)], results[len(items) :]
    return [Comparison(pid, outcome(f[0], s[0]), f[0], s[0], len(m) - len(b), (f[1][-1], s[1][-1]))
            for (pid, _, m, b), f, s in zip(items, first, second, strict=True)]


def summarize(comparisons: list[Comparison]) -> dict[str, float]:
    """Win rate (ties half) and its length-controlled twin over the judged comparisons (absent when
    none was), unparseable comparisons and the share of verdicts that flipped with the order; the
    caller names them (``pairwise/<key>_vs_<baseline>``)."""
    judged = [c for c in comparisons if c.outcome is not None]
    outcomes = [c.outcome for c in judged]
    both = [c for c in comparisons if c.verdict_model_first and c.verdict_model_second]
    disagree = sum(AS_FIRST[c.verdict_model_first] != AS_SECOND[c.verdict_model_second] for c in both)
    counts = {"parse_failures": float(len(comparisons) - len(judged)), "position_disagreement": disagree / max(len(both), 1)}
    if not outcomes:  # nothing judged: no rate to report
        return counts
    return counts | {"win_rate": win_rate(outcomes),
                     "lc_win_rate": length_controlled_win_rate(outcomes, [c.length_diff for c in judged])}
