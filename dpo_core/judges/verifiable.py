"""The verifiable-constraint judge: the share of a prompt's instructions an answer follows.

Partial credit (rather than all-or-nothing) separates more candidates, so fewer prompts end in
an all-way tie and more preference pairs survive binarization.
"""

from __future__ import annotations

from dpo_core.data.instructions import check_instructions
from dpo_core.judges.verdicts import Verdict

NAME = "verifiable-v1"


def judge(response: str, instructions: list[dict]) -> tuple[float, list[bool]]:
    """(score in [0, 1], per-instruction pass flags) under IFEval's strict checking."""
    if not instructions:
        raise ValueError("the verifiable judge needs at least one instruction per prompt")
    passed = check_instructions(response, instructions)
    return sum(passed) / len(passed), passed


class VerifiableJudge:
    """The constraint checks as a judge over (prompt record, candidate texts) items."""

    name = cache_id = "verifiable"
    version = NAME

    def judge(self, items, on_done) -> None:
        for i, (prompt, texts) in enumerate(items):
            results = [judge(t, prompt.instructions) for t in texts]
            on_done(i, Verdict([s for s, _ in results], [{"passed": p} for _, p in results]))
