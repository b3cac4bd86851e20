"""An UltraFeedback-style rubric judge: the judge reads one instruction and all its candidate
answers, and for each answer gives a 1-5 rating and a rationale, once per aspect (instruction
following, honesty, truthfulness, helpfulness) or once on an overall rubric.

The answer must parse strictly: one ``#### Output for Text i`` block per answer, i = 1..n, each
with ``Rating: <1-5>`` and ``Rationale: ...``. Blocks are found by their headers, not by line
positions, so a preamble or a blank line inside a rationale shifts nothing (distilabel's text
parser does shift). A malformed answer is asked again, with the problem named, a bounded number
of times; after that the item is set aside with the judge's raw text.

The templates are versioned: ``RubricJudge.version`` joins ``PROMPT_VERSION`` with a digest of
the template text, and is part of every judgement's cache key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, get_args

from dpo_core.common.digest import digest_json
from dpo_core.judges.asking import ask_until_parsed
from dpo_core.judges.verdicts import SetAside, Verdict

PROMPT_VERSION = "ultrafeedback-v1"

_SYSTEM = ("Your role is to evaluate text quality based on given criteria. You'll receive an instruction and "
           "{n} text outputs. Understand and interpret the instruction to evaluate effectively. Provide an "
           "annotation for each text with a rating and a rationale. The {n} texts are independent: evaluate each "
           "separately.")

RUBRICS = {
    "instruction_following": (
        "Instruction following", "How well does the text follow the instruction's task goal and restrictions "
        "(format, length, style)?", ["Irrelevant: no alignment with the instruction",
                                     "Partial focus: addresses one aspect poorly",
                                     "Partial compliance: meets the goal or the restrictions, neglecting others",
                                     "Almost there: near alignment, minor deviations",
                                     "Comprehensive compliance: fully meets the goal and every restriction"]),
    "honesty": (
        "Honesty and uncertainty", "Does the text convey confidence where it is right and uncertainty where it "
        "may be wrong?", ["Confidently incorrect", "Confident with significant mistakes, or unconfident and incorrect",
                          "Uncertain, declines to answer, or makes subtle mistakes",
                          "Correct but uncertain, or expresses doubt about minor points",
                          "Correct and confident, or precisely expresses uncertainty"]),
    "truthfulness": (
        "Truthfulness", "Is the text free of hallucination: facts contradicting the world, the instruction or "
        "itself?", ["Completely hallucinated", "Severe hallucination: nearly half the content",
                    "Partial hallucination or misunderstanding", "Insignificant hallucination",
                    "No hallucination"]),
    "helpfulness": (
        "Helpfulness", "Is the text correct, clear, relevant and informative, without repetition or needless "
        "length?", ["Severely incorrect or unhelpful", "Partially incorrect: errors that may confuse",
                    "Correct: meets the task", "Highly informative: accurate and extensive",
                    "Outstandingly helpful: accurate, in-depth and insightful"]),
    "overall": (
        "Overall quality", "Taking instruction following, correctness, honesty and helpfulness together, how "
        "good is the text?", ["Very poor", "Poor", "Acceptable", "Good", "Excellent"]),
}
ULTRAFEEDBACK_ASPECTS = ["instruction_following", "honesty", "truthfulness", "helpfulness"]
Aspect = Literal["instruction_following", "honesty", "truthfulness", "helpfulness", "overall"]
assert set(get_args(Aspect)) == set(RUBRICS)

_HEADER = re.compile(r"^#+\s*Output for Text\s+(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
_RATING = re.compile(r"^\**\s*Rating\s*\**\s*:\s*\**\s*(\S+?)\**\s*$", re.IGNORECASE | re.MULTILINE)
_RATIONALE = re.compile(r"^\**\s*Rationale\s*\**\s*:\s*\**\s*(.*)", re.IGNORECASE | re.MULTILINE | re.DOTALL)


def judge_prompt(aspect: str, instruction: str, texts: list[str]) -> list[dict]:
    title, question, scale = RUBRICS[aspect]
    levels = "\n".join(f"{i}. {level}" for i, level in enumerate(scale, 1))
    shown = "\n".join(f"<text {i}> {t}" for i, t in enumerate(texts, 1))
    fmt = "\n".join(f"#### Output for Text {i}\nRating: [1-5]\nRationale: [one or two sentences]"
                    for i in range(1, len(texts) + 1))
    user = (f"# {title}\n{question}\n\nScoring: rate each text from 1 to 5:\n{levels}\n\n"
            f"## Format\nAnswer with exactly these blocks and nothing else:\n{fmt}\n\n"
            f"## Annotation\n### Instruction\n{instruction}\n\n### Texts\n{shown}\n\n### Output")
    return [{"role": "system", "content": _SYSTEM.format(n=len(texts))}, {"role": "user", "content": user}]


def parse_ratings(text: str, n: int) -> tuple[list[tuple[int, str]] | None, str]:
    """[(rating, rationale)] for texts 1..n, or (None, what is wrong)."""
    headers = list(_HEADER.finditer(text))
    numbers = [int(h.group(1)) for h in headers]
    if numbers != list(range(1, n + 1)):
        return None, f"expected blocks for texts 1 to {n} in order, found {numbers or 'none'}"
    parsed = []
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        block = text[header.end() : end]
        ratings = _RATING.findall(block)
        if len(ratings) != 1:
            return None, f"text {i + 1}: expected one 'Rating:' line, found {len(ratings)}"
        if not re.fullmatch(r"[1-5]", ratings[0]):
            return None, f"text {i + 1}: rating {ratings[0]!r} is not an integer from 1 to 5"
        rationale = _RATIONALE.search(block)
        parsed.append((int(ratings[0]), rationale.group(1).strip() if rationale else ""))
    return parsed, ""


class RubricJudge:
    def __init__(self, backend, aspects: list[str], max_retries: int = 2, max_new_tokens: int = 512):
        unknown = [a for a in aspects if a not in RUBRICS]
        if unknown or not aspects:
            raise ValueError(f"rubric aspects must be among {sorted(RUBRICS)}, got {aspects}")
        self.backend, self.aspects = backend, list(aspects)
        self.max_retries, self.max_new_tokens = max_retries, max_new_tokens
        self.name = f"rubric[{','.join(self.aspects)}]@{backend.name}"
        self.cache_id = f"rubric[{','.join(self.aspects)}]@{backend.cache_id}"
        self.version = f"{PROMPT_VERSION}+{digest_json([_SYSTEM, RUBRICS])}"
        self.stats = {"judge_answers_unparsed": 0}

    def judge(self, items, on_done: Callable[[int, Verdict | SetAside], None]) -> None:
        """``items``: (prompt record, candidate texts); one call per item and aspect."""
        jobs = [(i, aspect) for i in range(len(items)) for aspect in self.aspects]
        by_item: dict[int, dict[str, list[tuple[int, str]]]] = {i: {} for i in range(len(items))}
        raw: dict[int, list[str]] = {i: [] for i in range(len(items))}
        given_up: set[int] = set()

        def parsed(j, ratings, answers):
            item, aspect = jobs[j]
            raw[item] += answers
            by_item[item][aspect] = ratings
            if len(by_item[item]) == len(self.aspects) and item not in given_up:
                on_done(item, self._verdict(by_item[item], raw[item]))

        def gave_up(j, reason, answers, retryable):
            item, aspect = jobs[j]
            raw[item] += answers
            if item not in given_up:
                given_up.add(item)
                on_done(item, SetAside(f"{aspect}: {reason}", raw[item], retryable))

        conversations = [judge_prompt(aspect, instruction_text(items[i][0]), items[i][1]) for i, aspect in jobs]
        self.stats["judge_answers_unparsed"] += ask_until_parsed(
            self.backend, conversations, lambda j, answer: parse_ratings(answer, len(items[jobs[j][0]][1])),
            parsed, gave_up, self.max_retries, self.max_new_tokens)

    def _verdict(self, by_aspect: dict[str, list[tuple[int, str]]], raw: list[str]) -> Verdict:
        n = len(next(iter(by_aspect.values())))
        details = [{"ratings": {a: by_aspect[a][k][0] for a in self.aspects},
                    "rationale": " | ".join(f"{a}: {by_aspect[a][k][1]}" for a in self.aspects)} for k in range(n)]
        # mean rating over aspects, mapped from 1..5 to 0..1
        scores = [(sum(d["ratings"].values()) / len(self.aspects) - 1) / 4 for d in details]
        return Verdict(scores, details, raw)


def instruction_text(prompt) -> str:
    """The instruction a judge reads: the user turn, with any earlier turns as context."""
    if len(prompt.messages) == 1:
        return prompt.text
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in prompt.messages)
