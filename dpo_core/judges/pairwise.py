"""Pairwise judging: the judge sees a question and two answers and answers ``[[A]]``, ``[[B]]``
or ``[[C]]`` (tie). Every comparison is asked in both orders (MT-Bench's remedy for position
bias); an answer wins only if both orders agree, and disagreement is a tie.

``PairwiseJudge`` scores a prompt's candidates by comparing every two of them: a candidate's
score is its share of wins over the others, ties counting half. The benchmark's win rate against
a baseline (dpo_core.evaluate.benchmarks.pairwise) uses the same prompt and rule.
"""

from __future__ import annotations

from itertools import combinations

from dpo_core.common.digest import digest_json
from dpo_core.judges.asking import ask_until_parsed
from dpo_core.judges.parsing import parse_verdict
from dpo_core.judges.rubric import instruction_text
from dpo_core.judges.verdicts import SetAside, Verdict

PROMPT_VERSION = "pairwise-v1"

_SYSTEM = ("You compare two AI assistant answers to the same user question. Consider which answer follows "
           "the user's instructions better and is more helpful and accurate; ignore length and order. Explain "
           "briefly, then output your verdict in exactly this format: [[A]] if answer A is better, [[B]] if "
           "answer B is better, [[C]] for a tie.")

AS_FIRST = {"A": 1.0, "B": 0.0, "C": 0.5}  # an answer's score when it was shown as A
AS_SECOND = {"B": 1.0, "A": 0.0, "C": 0.5}  # ... when it was shown as B


def pairwise_prompt(question: str, a: str, b: str) -> list[dict]:
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": f"### Question:\n{question}\n\n### Answer A:\n{a}\n\n### Answer B:\n{b}"}]


def outcome(first: str | None, second: str | None) -> float | None:
    """Score of one answer: ``first`` is the verdict with it as A, ``second`` with it as B.
    Orders that disagree make a tie; None if either verdict is missing."""
    if first is None or second is None:
        return None
    return AS_FIRST[first] if AS_FIRST[first] == AS_SECOND[second] else 0.5


class PairwiseJudge:
    def __init__(self, backend, max_retries: int = 2, max_new_tokens: int = 256):
        self.backend, self.max_retries, self.max_new_tokens = backend, max_retries, max_new_tokens
        self.name, self.cache_id = f"pairwise@{backend.name}", f"pairwise@{backend.cache_id}"
        self.version = f"{PROMPT_VERSION}+{digest_json(_SYSTEM)}"
        self.stats = {"judge_answers_unparsed": 0, "comparisons": 0, "position_disagreements": 0}

    def judge(self, items, on_done) -> None:
        """``items``: (prompt record, candidate texts); C(n, 2) comparisons, each in both orders."""
        jobs, conversations = [], []
        for i, (prompt, texts) in enumerate(items):
            for a, b in combinations(range(len(texts)), 2):
                for first, second in ((a, b), (b, a)):
                    jobs.append((i, a, b, first == a))
                    conversations.append(pairwise_prompt(instruction_text(prompt), texts[first], texts[second]))
        needed = {i: 2 * len(list(combinations(range(len(t)), 2))) for i, (_, t) in enumerate(items)}
        verdicts: dict[int, dict] = {i: {} for i in range(len(items))}
        raw: dict[int, list[str]] = {i: [] for i in range(len(items))}
        closed: set[int] = set()

        def parsed(j, verdict, answers):
            i, a, b, a_first = jobs[j]
            raw[i] += answers
            verdicts[i][(a, b, a_first)] = verdict
            if len(verdicts[i]) == needed[i] and i not in closed:
                closed.add(i)
                on_done(i, self._scores(len(items[i][1]), verdicts[i], raw[i]))

        def gave_up(j, reason, answers, retryable):
            i = jobs[j][0]
            raw[i] += answers
            if i not in closed:
                closed.add(i)
                on_done(i, SetAside(f"pairwise comparison {jobs[j][1:3]}: {reason}", raw[i], retryable))

        self.stats["judge_answers_unparsed"] += ask_until_parsed(
            self.backend, conversations, lambda _, answer: parse_verdict(answer), parsed, gave_up, self.max_retries,
            self.max_new_tokens)

    def _scores(self, n: int, verdicts: dict, raw: list[str]) -> Verdict:
        points = [0.0] * n
        for a, b in combinations(range(n), 2):
            result = outcome(verdicts[(a, b, True)], verdicts[(a, b, False)])  # for answer a
            self.stats["comparisons"] += 1
            self.stats["position_disagreements"] += AS_FIRST[verdicts[(a, b, True)]] != AS_SECOND[verdicts[(a, b, False)]]
            points[a] += result
            points[b] += 1.0 - result
        scores = [p / max(n - 1, 1) for p in points]
        return Verdict(scores, [{"pairwise_points": p} for p in points], raw)
