"""The names of the held-out metrics, shared by the stage that computes them and the gate that decides on them.

Each is the mean over the held-out prompts of a per-prompt score of the same name, so the gate can
run its paired bootstrap on any of them: the verifiable ones derive from an ``EvalSample``'s pass
flags (prompts with instructions only), the others are stored in ``EvalSample.scores`` (prompts the
judge could not rate hold None and are left out of the mean, and counted). Head-to-head metrics
exist for the DPO model only, once per baseline: ``versus(PAIRWISE_WIN, "base")`` is
``pairwise/win_rate_vs_base``, per prompt 1 (win), 0.5 (tie) or 0 (loss).
"""

from __future__ import annotations

from typing import Literal, get_args

# The held-out accuracies of this project's own instruction checkers (IFEval's definitions, not its data)
Verifiable = Literal["verifiable/prompt_strict", "verifiable/instruction_strict", "verifiable/prompt_loose",
                     "verifiable/instruction_loose"]
VERIFIABLE = get_args(Verifiable)
JUDGE_RATING = "judge/rating"  # MT-Bench single grading of the answer, 1-10
REWARD = "reward/score"  # the reward model's raw reward of the answer
PAIRWISE_WIN = "pairwise/win_rate"  # the judge's verdict, asked in both orders, against a baseline's answer
REWARD_WIN = "reward/win_rate"  # the higher reward against a baseline's answer, ties half
HEAD_TO_HEAD = (PAIRWISE_WIN, REWARD_WIN)

# What the gate can decide on: every metric with a per-prompt score
GateMetric = Literal[Verifiable, "judge/rating", "reward/score", "pairwise/win_rate", "reward/win_rate"]
GATE_METRICS = get_args(GateMetric)


def versus(metric: str, baseline: str) -> str:
    """The name of a head-to-head metric against one baseline model."""
    return f"{metric}_vs_{baseline}"
