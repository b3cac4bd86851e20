"""Strict parsing of LLM-judge answers, tolerant of the usual slips.

MT-Bench's judge explains, then writes ``[[rating]]`` (single grading) or ``[[A]]``/``[[B]]``/
``[[C]]`` (pairwise). Judges slip: single brackets, "Rating: 8/10", bold, a trailing period, a
verdict repeated. A parse returns ``(value, "")``, or ``(None, problem)`` when nothing unambiguous
is there: the problem is what the judge is told when it is asked again (dpo_core.judges.asking).
"""

from __future__ import annotations

import re

_DOUBLE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SINGLE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
_RATING_WORD = re.compile(r"rating(?:\s+of)?\W{0,3}\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.IGNORECASE)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_VERDICT_SINGLE = re.compile(r"\[\s*([ABC])\s*\]")


def parse_rating(text: str, low: float = 1, high: float = 10) -> tuple[float | None, str]:
    """The judge's rating in [low, high], taking the last ``[[x]]`` (then ``[x]``, then
    "Rating: x"); None, with the problem, if absent, out of range, or if different ratings are given."""
    for pattern in (_DOUBLE, _SINGLE, _RATING_WORD):
        found = {float(m) for m in pattern.findall(text)}
        if not found:
            continue
        if len(found) > 1:  # contradictory ratings: ask again rather than guess
            return None, f"it gives different ratings ({', '.join(f'{v:g}' for v in sorted(found))})"
        value = found.pop()
        if not low <= value <= high:
            return None, f"the rating {value:g} is outside {low:g} to {high:g}"
        return value, ""
    return None, "it has no rating in the form [[rating]]"


def parse_verdict(text: str) -> tuple[str | None, str]:
    """"A", "B" or "C" (tie) from a pairwise judgement; None, with the problem, if absent or contradictory."""
    for pattern in (_VERDICT, _VERDICT_SINGLE):
        found = set(pattern.findall(text))
        if len(found) == 1:
            return found.pop(), ""
        if found:
            return None, f"it gives different verdicts ({', '.join(sorted(found))})"
    return None, "it has no verdict in the form [[A]], [[B]] or [[C]]"
