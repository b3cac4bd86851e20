"""Iterative on-policy DPO: what each round samples, judges and trains against, and when rounds stop.

Offline DPO trains on pairs sampled once from the starting model; they go stale as the policy
moves. The papers that fixed this run rounds (Iterative RPO, Pang et al. 2024; Self-Rewarding LMs,
Yuan et al. 2024; RLHFlow's online iterative RLHF, Dong et al. 2024): in round r the policy of
round r-1 samples new candidates, the judge relabels them, and DPO trains again from that policy.
``flows/iterative.py`` runs the rounds; this module holds the plan of one round, free of torch and
Prefect so the flow process loads it without a model stack.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field

from dpo_core.common.config import config_dataclass
from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.records import EvalSample
from dpo_core.evaluate.gate import Decision, GateConfig, decide
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.train.config import DPOConfig


@config_dataclass
class RoundsConfig:
    rounds: int = Field(3, ge=1, le=50, description="Rounds of sample -> judge -> DPO, each from the last "
                                                    "round's policy (Self-Rewarding and RLHFlow run 3)")
    prompts: Literal["fresh", "same"] = Field(
        "fresh", description="fresh: the training prompts are dealt into one slice per round, so every round "
                             "answers prompts it never saw (RLHFlow, OpenRLHF); same: every round answers them all")
    reference: Literal["round_start", "initial", "soft_update"] = Field(
        "round_start", description="DPO's reference in round r: round_start, the policy the round starts from "
                                   "(Iterative RPO, Self-Rewarding); initial, the model round 1 starts from (RLHFlow, "
                                   "OpenRLHF); soft_update, round_start mixed into the moving policy during training "
                                   "(TR-DPO, Gorbatovski et al. 2024: dpo.ref_model_mixup_alpha every "
                                   "dpo.ref_model_sync_steps steps). Reference log-probs are computed fresh each round")
    stop_when_worse: bool = Field(True, description="Stop when a round's policy is worse than the previous round's "
                                                    "by the gate's rule (the previous one would be promoted over it)")
    self_rewarding: bool = Field(False, description="The judge is the round's own policy with the rubric prompt "
                                                    "(Self-Rewarding LMs); feedback.judge is then not read")


def round_prompts(train_path: Path, cfg: RoundsConfig, round_no: int, out_dir: Path) -> Path:
    """The prompts round ``round_no`` (1-based) answers: a contiguous slice of the (already shuffled)
    training prompts for fresh prompts, all of them for the same prompts."""
    prompts = read_jsonl(train_path)
    if cfg.prompts == "fresh":
        if len(prompts) < cfg.rounds:
            raise ValueError(f"{train_path}: {len(prompts)} training prompts cannot give each of {cfg.rounds} "
                             "rounds fresh ones: give more prompts, fewer rounds, or rounds.prompts=same")
        size, extra = divmod(len(prompts), cfg.rounds)
        start = (round_no - 1) * size + min(round_no - 1, extra)
        prompts = prompts[start : start + size + (round_no <= extra)]
    return write_jsonl(Path(out_dir) / f"round-{round_no}-prompts.jsonl", prompts)


def round_feedback(feedback: FeedbackConfig, cfg: RoundsConfig, policy_path: str) -> FeedbackConfig:
    """The round's feedback settings: with self-rewarding, the round's policy judges its own candidates
    with the rubric prompt, on the stage's engine."""
    if not cfg.self_rewarding:
        return feedback
    engine = "vllm" if feedback.engine.resolved() == "vllm" else "local"
    return replace(feedback, judge=f"rubric:{engine}:{policy_path}")


def round_dpo(dpo: DPOConfig, cfg: RoundsConfig) -> DPOConfig:
    """The round's DPO settings: a soft-updated reference is TR-DPO's, which moves, so it runs every step."""
    if cfg.reference != "soft_update":
        return dpo
    return replace(dpo, sync_ref_model=True, precompute_reference=False)


def load_samples(samples_path: str, model: str) -> list[EvalSample]:
    rows = [r for r in read_jsonl(samples_path) if r["model"] == model]
    return [EvalSample.from_dict(r) for r in rows]


def regression(previous: list[EvalSample], current: list[EvalSample], gate: GateConfig) -> Decision:
    """The gate's decision with the previous round's policy as challenger: promoting it means the
    current round made the policy worse, with the gate's confidence."""
    return decide(previous, current, replace(gate, min_improvement=max(gate.min_improvement, 0.0)))


def best_round(scores: list[float]) -> int:
    """The index of the best round by the gate's primary metric; the earliest of equals (fewer steps
    away from the reference for the same score)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
