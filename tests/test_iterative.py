"""The plan of one round of iterative DPO: its prompts, its judge, its reference, the stop rule."""

from __future__ import annotations

import pytest

from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.records import EvalSample
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.inference.config import EngineConfig
from dpo_core.iterative import RoundsConfig, best_round, regression, round_dpo, round_feedback, round_prompts
from dpo_core.train.config import DPOConfig


def _prompts(tmp_path, n):
    rows = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"prompt {i}"}], "instructions": []}
            for i in range(n)]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_fresh_prompts_deal_every_prompt_to_exactly_one_round(tmp_path):
    train = _prompts(tmp_path, 10)
    cfg = RoundsConfig(rounds=3, prompts="fresh")
    slices = [[r["id"] for r in read_jsonl(round_prompts(train, cfg, r, tmp_path))] for r in (1, 2, 3)]
    assert [len(s) for s in slices] == [4, 3, 3]
    assert sorted(sum(slices, []), key=lambda i: int(i[1:])) == [f"p{i}" for i in range(10)]
    same = RoundsConfig(rounds=3, prompts="same")
    assert len(read_jsonl(round_prompts(train, same, 2, tmp_path))) == 10


def test_fresh_prompts_refuse_fewer_prompts_than_rounds(tmp_path):
    with pytest.raises(ValueError, match="rounds.prompts=same"):
        round_prompts(_prompts(tmp_path, 2), RoundsConfig(rounds=3), 1, tmp_path)


def test_self_rewarding_makes_the_policy_its_own_rubric_judge():
    feedback = FeedbackConfig(engine=EngineConfig(name="local"))
    assert round_feedback(feedback, RoundsConfig(), "/models/round-1") is feedback
    judged = round_feedback(feedback, RoundsConfig(self_rewarding=True), "/models/round-1")
    assert judged.judge == "rubric:local:/models/round-1"
    on_vllm = round_feedback(FeedbackConfig(engine=EngineConfig(name="vllm")), RoundsConfig(self_rewarding=True), "/m")
    assert on_vllm.judge == "rubric:vllm:/m"


def test_soft_update_reference_is_tr_dpo_run_every_step():
    dpo = DPOConfig()
    assert round_dpo(dpo, RoundsConfig(reference="initial")) is dpo
    soft = round_dpo(dpo, RoundsConfig(reference="soft_update"))
    assert (soft.sync_ref_model, soft.precompute_reference) == (True, False)


def _samples(model, passes):
    return [EvalSample(model, f"p{i}", "q", "a", [p], [p]) for i, p in enumerate(passes)]


def test_a_round_regresses_only_when_the_gate_would_prefer_the_previous_policy():
    gate = GateConfig()
    previous = _samples("prev", [True] * 40 + [False] * 10)
    worse = _samples("cur", [False] * 30 + [True] * 10 + [False] * 10)
    assert regression(previous, worse, gate).promote
    close = _samples("cur", [True] * 38 + [False] * 2 + [False] * 10)
    assert not regression(previous, close, gate).promote
    better = _samples("cur", [True] * 50)
    assert not regression(previous, better, gate).promote


def test_best_round_is_the_highest_score_and_the_earliest_of_equals():
    assert best_round([0.2, 0.4, 0.3]) == 1
    assert best_round([0.4, 0.4, 0.3]) == 0
