"""SFT and DPO on a tiny model: what they write, and DPO's starting point."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tiny import CHAT, Crash, crash_after, read_metrics, write_uneven_pairs
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.testing import assert_close

from dpo_core.common.io import write_jsonl
from dpo_core.common.models import load_model
from dpo_core.train import loop
from dpo_core.train.config import DPOConfig, SFTConfig
from dpo_core.train.dpo.reference import reference_key
from dpo_core.train.dpo.trainer import train_dpo
from dpo_core.train.sft import train_sft


@pytest.fixture()
def pairs_path(tmp_path):
    rows = [{"prompt_id": f"p{i}", "prompt": CHAT, "chosen": [{"role": "assistant", "content": f"calm {i}"}],
             "rejected": [{"role": "assistant", "content": f"LOUD WORDS {i}"}], "score_chosen": 1.0,
             "score_rejected": 0.0} for i in range(8)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.fixture()
def uneven_pairs_path(tmp_path):
    return write_uneven_pairs(tmp_path / "uneven_pairs.jsonl")


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_starts_at_ln2_and_learns(tiny_model, pairs_path, tmp_path, lora, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    cfg = DPOConfig(lora=lora, learning_rate=5e-3, epochs=4, batch_size=4, warmup_ratio=0.0)
    result = train_dpo(cfg, tiny_model, [pairs_path], tmp_path)
    steps = read_metrics(tmp_path)
    # First step: policy == reference, so every pair's loss is -log sigmoid(0) = ln 2.
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert steps[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["rewards/margins"] > 0
    assert len(steps) == 8 and [s["step"] for s in steps] == list(range(1, 9))
    assert (Path(result.model_path) / "model.safetensors").exists()
    assert (result.adapter_path is not None) == lora
    load_model(result.model_path)  # the merged checkpoint loads as a plain model


def _grads_at_each_step(run) -> list[dict]:
    """Run ``run()`` and record the gradients the optimizer sees at every step."""
    seen = []

    def hook(optimizer, args, kwargs):
        seen.append({id(p): p.grad.clone() for g in optimizer.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return [dict(sorted(enumerate(g.values()))) for g in seen]


def _assert_same_steps(big: list[dict], acc: list[dict], out_big: Path, out_acc: Path) -> None:
    """Same gradients at every step, the same logged loss, grad norm and token count, the same weights."""
    assert len(big) == len(acc) == 2
    for step_big, step_acc in zip(big, acc, strict=True):
        for i in step_big:
            assert_close(step_acc[i], step_big[i], rtol=1e-4, atol=1e-6)
    for a, b in zip(read_metrics(out_big), read_metrics(out_acc), strict=True):
        for key in ("loss", "grad_norm", "num_tokens"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    weights = load_file(out_big / "model" / "model.safetensors")
    for name, weight in load_file(out_acc / "model" / "model.safetensors").items():
        assert_close(weight, weights[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("loss_type", [["sigmoid"], ["sigmoid", "sft"]])  # pairwise alone; RPO's token-mean NLL too
def test_grad_accumulation_equals_a_larger_batch(tiny_model, uneven_pairs_path, tmp_path, monkeypatch, loss_type):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    # fp32: bf16 matmul kernels differ with the batch's shape, so bf16 would move a batch of 4 from 4 of 1 by ~1e-5
    common = dict(lora=False, learning_rate=1e-3, max_steps=2, warmup_ratio=0.0, loss_type=loss_type, precision="fp32")
    big = _grads_at_each_step(lambda: train_dpo(DPOConfig(batch_size=4, grad_accum=1, **common), tiny_model,
                                                [uneven_pairs_path], tmp_path / "big"))
    acc = _grads_at_each_step(lambda: train_dpo(DPOConfig(batch_size=1, grad_accum=4, **common), tiny_model,
                                                [uneven_pairs_path], tmp_path / "acc"))
    _assert_same_steps(big, acc, tmp_path / "big", tmp_path / "acc")


def test_sft_grad_accumulation_equals_a_larger_batch(tiny_model, tmp_path):
    """SFT's loss is a mean over the step's loss tokens: single answers of 1 to 4 words and
    conversations of 1 to 3 assistant turns (user turns of uneven length between them, which are
    no loss tokens) accumulated one at a time must weigh every assistant token as one batch of
    four does, not each example's mean alike."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"q{i}", "messages": CHAT, "instructions": []}
                                                      for i in range(4)])
    cands = write_jsonl(tmp_path / "cands.jsonl", [
        {"prompt_id": f"q{i}", "index": 0, "model": "m", "text": "calm " * (1 + i), "n_tokens": 1 + i,
         "score": 1.0, "passed": []} for i in range(4)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"id": f"c{i}", "messages": [turn for t in range(1 + i % 3) for turn in (
            {"role": "user", "content": "tell me more " * (1 + (i + t) % 4)},
            {"role": "assistant", "content": "quiet " * (1 + (3 * i + t) % 5)})]} for i in range(4)])
    common = dict(lora=False, learning_rate=1e-3, max_steps=2, warmup_ratio=0.0, sources=["conversations", "best"],
                  min_score=1.0, precision="fp32")  # fp32: as in test_grad_accumulation_equals_a_larger_batch
    data = dict(conversations_path=chats, prompts_path=prompts, candidates_path=cands)
    big = _grads_at_each_step(lambda: train_sft(SFTConfig(batch_size=4, grad_accum=1, **common), tiny_model,
                                                tmp_path / "big", **data))
    acc = _grads_at_each_step(lambda: train_sft(SFTConfig(batch_size=1, grad_accum=4, **common), tiny_model,
                                                tmp_path / "acc", **data))
    _assert_same_steps(big, acc, tmp_path / "big", tmp_path / "acc")


@pytest.mark.parametrize("lora", [False, True])
def test_optimizer_in_backward_equals_a_step_after_backward(tiny_model, pairs_path, tmp_path, monkeypatch, lora):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    common = dict(lora=lora, learning_rate=1e-3, max_steps=3, batch_size=2, warmup_ratio=0.0, max_grad_norm=0.0)
    after = train_dpo(DPOConfig(**common), tiny_model, [pairs_path], tmp_path / "after")
    inside = train_dpo(DPOConfig(optimizer_in_backward=True, **common), tiny_model, [pairs_path], tmp_path / "inside")
    for name, weight in load_file(Path(after.model_path) / "model.safetensors").items():
        assert_close(load_file(Path(inside.model_path) / "model.safetensors")[name], weight, rtol=1e-5, atol=1e-6)
    for a, b in zip(read_metrics(tmp_path / "after"), read_metrics(tmp_path / "inside"), strict=True):
        assert a["grad_norm"] > 0 and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)


def test_optimizer_in_backward_refuses_clipping_and_accumulation():
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        DPOConfig(optimizer_in_backward=True)
    with pytest.raises(ValueError, match="grad_accum=1"):
        DPOConfig(optimizer_in_backward=True, max_grad_norm=0.0, grad_accum=2)


@pytest.mark.parametrize(("lora", "in_backward"), [(True, False), (False, False), (False, True)])
def test_resume_after_a_crash_gives_the_same_weights(tiny_model, pairs_path, tmp_path, monkeypatch, lora, in_backward):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    cfg = DPOConfig(lora=lora, learning_rate=5e-3, epochs=3, batch_size=2, save_steps=2, warmup_ratio=0.25,
                    optimizer_in_backward=in_backward, max_grad_norm=0.0 if in_backward else 1.0)
    straight = train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "straight")

    with pytest.raises(Crash):
        train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "resumed", on_step=crash_after(5))
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    resumed = train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "resumed")
    assert (straight.metrics["resumed_from_step"], resumed.metrics["resumed_from_step"]) == (0, 4)
    a, b = load_file(Path(straight.model_path) / "model.safetensors"), load_file(Path(resumed.model_path) / "model.safetensors")
    for name in a:
        assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    losses = {run: [m["loss"] for m in read_metrics(tmp_path / run)] for run in ("resumed", "straight")}
    assert losses["resumed"] == pytest.approx(losses["straight"])


def test_checkpoints_by_time_resume_a_crashed_run(tiny_model, pairs_path, tmp_path, monkeypatch):
    """The default rule (save_steps=0): checkpoints as often as 20x their own write time allows here,
    where the interval is tiny; a crashed run resumes from the last one it wrote."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    cfg = DPOConfig(lora=False, learning_rate=5e-3, epochs=3, batch_size=2, checkpoint_interval_s=1e-6)
    straight = train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "straight")
    assert straight.metrics["checkpoints_written"] >= 1
    with pytest.raises(Crash):
        train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "resumed", on_step=crash_after(5))
    last = int(sorted((tmp_path / "resumed" / "checkpoints").glob("step-*"))[-1].name.split("-")[1])
    resumed = train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "resumed")
    assert resumed.metrics["resumed_from_step"] == last > 0
    a, b = load_file(Path(straight.model_path) / "model.safetensors"), load_file(Path(resumed.model_path) / "model.safetensors")
    for name in a:
        assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)


def test_the_checkpoint_clock_keeps_checkpoints_under_a_twentieth_of_training(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    every_3 = loop.CheckpointClock(save_steps=3, interval_s=60)
    assert [s for s in range(1, 10) if every_3.due(s)] == [3, 6, 9]
    never = loop.CheckpointClock(save_steps=0, interval_s=0)
    now[0] = 1e6
    assert not never.due(1)

    clock = loop.CheckpointClock(save_steps=0, interval_s=60)  # started at 1e6
    now[0] += 59
    assert not clock.due(1)  # a run shorter than the interval writes none
    now[0] += 1
    assert clock.due(2)
    clock.written(10.0)  # a slow disk: the next one waits 20 x 10 s, not 60 s
    now[0] += 199
    assert not clock.due(3)
    now[0] += 1
    assert clock.due(4)
    clock.written(1.0)  # a fast one: back to the interval
    now[0] += 60
    assert clock.due(5) and (clock.count, clock.seconds) == (2, 11.0)


def test_reference_logps_are_reused_across_runs(tiny_model, pairs_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    first = train_dpo(DPOConfig(max_steps=1, beta=0.1), tiny_model, [pairs_path], tmp_path / "a")
    second = train_dpo(DPOConfig(max_steps=1, beta=0.3, loss_type=["ipo"]), tiny_model, [pairs_path], tmp_path / "b")
    assert first.metrics["reference_reused"] == 0.0 and second.metrics["reference_reused"] == 1.0
    assert len(list((tmp_path / "cache" / "reference-logps").iterdir())) == 1


@pytest.mark.parametrize("lora", [False, True])
def test_every_step_reference_matches_precomputed(tiny_model, uneven_pairs_path, tmp_path, monkeypatch, lora):
    """The reference run every step (a frozen copy, or the policy with its adapter off) and the one
    precomputed before training give the same losses, rewards, eval metrics and weights, step after
    step: a reference that moved with the policy would agree at step 1 only."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    common = dict(lora=lora, learning_rate=5e-3, max_steps=3, batch_size=2, warmup_ratio=0.0, eval_fraction=0.25,
                  eval_steps=1)
    runs = {mode: train_dpo(DPOConfig(precompute_reference=mode == "pre", **common), tiny_model, [uneven_pairs_path],
                            tmp_path / mode) for mode in ("pre", "every")}
    pre, every = read_metrics(tmp_path / "pre"), read_metrics(tmp_path / "every")
    assert pre[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert pre[-1]["rewards/margins"] > 0.01  # training moved the policy away from the reference
    for a, b in zip(pre, every, strict=True):
        assert set(a) == set(b) and "eval_loss" in a
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    weights = load_file(Path(runs["pre"].model_path) / "model.safetensors")
    for name, weight in load_file(Path(runs["every"].model_path) / "model.safetensors").items():
        assert_close(weight, weights[name], rtol=1e-4, atol=1e-6, msg=name)


def test_reference_key_names_the_precision():
    examples = [([1, 2], [[3], [4, 5]])]
    assert reference_key("model", examples, "bf16") != reference_key("model", examples, "fp32")


def test_bf16_precomputed_reference_matches_the_per_step_one(tiny_model, uneven_pairs_path, tmp_path, monkeypatch):
    """Under bf16 autocast the precomputed reference runs in bf16 as the per-step one does, so at the
    first step (policy == reference) both give zero rewards and ln 2; a reference computed in fp32
    against a bf16 policy is off by ~5e-3 nats a sequence. All 8 pairs share one batch in both
    passes: bf16 results also move by ~5e-4 nats with the batch's size (CPU kernels are chosen by it)."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    common = dict(lora=True, precision="bf16", beta=1.0, max_steps=1, batch_size=8)
    for mode in ("pre", "every"):
        train_dpo(DPOConfig(precompute_reference=mode == "pre", **common), tiny_model, [uneven_pairs_path],
                  tmp_path / mode)
    (pre,), (every,) = read_metrics(tmp_path / "pre"), read_metrics(tmp_path / "every")
    for step in (pre, every):
        assert step["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
        assert step["rewards/rejected"] == pytest.approx(0.0, abs=1e-6)
        assert step["loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_sft_trains_on_best_candidates_only(tiny_model, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        {"id": "a", "messages": CHAT, "instructions": [{"kind": "lowercase", "args": {}}]},
        {"id": "b", "messages": CHAT, "instructions": [{"kind": "lowercase", "args": {}}]}])
    cands = write_jsonl(tmp_path / "cands.jsonl", [
        {"prompt_id": "a", "index": 0, "model": "m", "text": "good", "n_tokens": 2, "score": 1.0, "passed": [True]},
        {"prompt_id": "a", "index": 1, "model": "m", "text": "BAD", "n_tokens": 2, "score": 0.0, "passed": [False]},
        {"prompt_id": "b", "index": 0, "model": "m", "text": "MEH", "n_tokens": 2, "score": 0.0, "passed": [False]}])
    cfg = SFTConfig(learning_rate=1e-2, epochs=5, batch_size=1, min_score=1.0, warmup_ratio=0.0)
    result = train_sft(cfg, tiny_model, tmp_path / "out", prompts_path=prompts, candidates_path=cands)
    assert result.metrics["train_examples"] == result.metrics["examples_best"] == 1
    assert result.metrics["truncated_examples"] == 0
    steps = read_metrics(tmp_path / "out")
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_dpo_trains_on_every_pair_file_and_counts_truncated_pairs(tiny_model, pairs_path, tmp_path, monkeypatch):
    """A team's pairs beside the collected ones: 8 + 3 pairs, the 3 with answers too long for
    max_length, which are cut to fit and counted; a file list with no pairs at all names each file."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    team = write_jsonl(tmp_path / "team_pairs.jsonl", [
        {"prompt_id": f"t{i}", "prompt": CHAT, "chosen": [{"role": "assistant", "content": "calm " * 80}],
         "rejected": [{"role": "assistant", "content": "LOUD"}], "score_chosen": 1.0, "score_rejected": 0.0}
        for i in range(3)])
    cfg = DPOConfig(max_length=64, max_steps=1, batch_size=11)
    result = train_dpo(cfg, tiny_model, [pairs_path, team], tmp_path / "out")
    assert result.metrics["train_pairs"] == 11 and result.metrics["truncated_pairs"] == 3
    assert read_metrics(tmp_path / "out")[0]["num_tokens"] <= 11 * 2 * 64
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match=f"{empty}: 0"):
        train_dpo(cfg, tiny_model, [empty], tmp_path / "none")
    with pytest.raises(TypeError, match="list of pair files"):
        train_dpo(cfg, tiny_model, pairs_path, tmp_path / "single")


def test_bad_config_fails_at_construction():
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(loss_type=["nope"])
    with pytest.raises(ValueError, match="loss_weights"):
        DPOConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="scheduler"):
        SFTConfig(scheduler="step")
