"""The verifiable-constraint judge: the share of a prompt's instructions an answer follows.

Partial credit (rather than all-or-nothing) separates more candidates, so fewer prompts end in
an all-way tie and more preference pairs survive binarization.
"""

from __future__ import annotations

from dpo_core.instructions import check_instructions

NAME = "verifiable-v1"


def judge(response: str, instructions: list[dict]) -> tuple[float, list[bool]]:
    """(score in [0, 1], per-instruction pass flags) under IFEval's strict checking."""
    if not instructions:
        raise ValueError("the verifiable judge needs at least one instruction per prompt")
    passed = check_instructions(response, instructions)
    return sum(passed) / len(passed), passed
