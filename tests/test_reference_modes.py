"""Reference options for iterative DPO on tiny random models in fp32: another model as the reference
(precomputed or run every step, LoRA or full fine-tune), and TR-DPO's reference that moves towards
the policy during training (Gorbatovski et al. 2024), checked against TRL's update and resumed from
a checkpoint."""

from __future__ import annotations

import copy
import math
import shutil
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import _assert_same_training, _pairs, _run
from tiny import Crash, crash_after, make_tiny_model, read_metrics, write_uneven_pairs
from torch.testing import assert_close
from trl.trainer.callbacks import SyncRefModelCallback

from dpo_core.common.models import load_model
from dpo_core.train.config import DPOConfig
from dpo_core.train.dpo import trainer
from dpo_core.train.dpo.trainer import train_dpo

COMMON = dict(learning_rate=5e-3, batch_size=2, warmup_ratio=0.0, precision="fp32")
TR_DPO = dict(sync_ref_model=True, precompute_reference=False)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """A second tiny model, the same architecture and tokenizer with other random weights: pi_0."""
    return str(make_tiny_model(tmp_path_factory.mktemp("other") / "model", seed=1))


@pytest.fixture()
def pairs_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    return write_uneven_pairs(tmp_path / "pairs.jsonl")


def _losses(out: Path) -> list[float]:
    return [m["loss"] for m in read_metrics(out)]


@pytest.mark.parametrize("lora", [False, True])
def test_another_reference_model_precomputed_equals_per_step(tiny_model, other_model, pairs_path, tmp_path,
                                                            monkeypatch, lora):
    """pi_0 as the reference gives the same losses precomputed as run every step, and not those of
    the policy as its own reference, which start at ln 2; the starting policy named as a
    reference_model (a frozen copy) trains as the default reference does. The precomputed pi_0 is
    freed before the policy loads."""
    loaded = []  # (path, weak reference) of every model the precomputing run loads, in order
    real_load = trainer.load_model

    def recording_load(path, *args, **kwargs):
        if Path(path) == Path(tiny_model).resolve():  # the policy: pi_0 must be gone by now
            assert [p for p, alive in loaded if alive() is not None] == []
        model = real_load(path, *args, **kwargs)
        loaded.append((path, weakref.ref(model)))
        return model

    cfg = dict(COMMON, lora=lora, max_steps=3)
    with monkeypatch.context() as patch:
        patch.setattr(trainer, "load_model", recording_load)
        runs = {"pre": train_dpo(DPOConfig(**cfg), tiny_model, [pairs_path], tmp_path / "pre",
                                 reference_model=other_model)}
    assert [Path(p) for p, _ in loaded] == [Path(other_model).resolve(), Path(tiny_model).resolve()]
    runs |= {
        "every": train_dpo(DPOConfig(precompute_reference=False, **cfg), tiny_model, [pairs_path], tmp_path / "every",
                           reference_model=other_model),
        "policy": train_dpo(DPOConfig(**cfg), tiny_model, [pairs_path], tmp_path / "policy"),
        "named": train_dpo(DPOConfig(precompute_reference=False, **cfg), tiny_model, [pairs_path], tmp_path / "named",
                           reference_model=tiny_model),
    }
    pre, every = read_metrics(tmp_path / "pre"), read_metrics(tmp_path / "every")
    for a, b in zip(pre, every, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        for key in ("rewards/chosen", "rewards/rejected", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    policy = _losses(tmp_path / "policy")
    assert policy[0] == pytest.approx(math.log(2), abs=1e-6) and pre[0]["rewards/chosen"] != pytest.approx(0, abs=1e-3)
    assert all(abs(a - b) > 1e-4 for a, b in zip(_losses(tmp_path / "pre"), policy, strict=True))
    assert _losses(tmp_path / "named") == pytest.approx(policy, abs=1e-6)
    assert [runs[r].metrics["reference_is_policy"] for r in runs] == [0.0, 0.0, 1.0, 0.0]
    assert len(list((tmp_path / "cache" / "reference-logps").iterdir())) == 2  # pi_0's table and the policy's


def test_a_reference_model_with_another_vocabulary_is_refused(tiny_model, tiny_base_model, pairs_path, tmp_path):
    with pytest.raises(ValueError, match="vocabulary"):
        train_dpo(DPOConfig(max_steps=1), tiny_model, [pairs_path], tmp_path, reference_model=tiny_base_model)


def _plain_weights(model) -> dict[str, torch.Tensor]:
    """A model's weights as a plain transformers model names them; a PEFT model merged by peft's own
    ``merge_and_unload`` on a copy (independent of the trainer's base + delta)."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _record_tr_dpo(monkeypatch) -> tuple[list, list]:
    """Wrap the trainer's ``fit`` hook: after every optimizer step, the policy's weights before the
    reference update and the reference's after it."""
    policies, references = [], []
    real_fit = trainer.fit

    def recording_fit(model, *args, after_step, checkpointed, **kwargs):
        def after(step):
            policies.append(_plain_weights(model))
            metrics = after_step(step)
            references.append(_plain_weights(checkpointed["reference"]))
            return metrics

        return real_fit(model, *args, after_step=after, checkpointed=checkpointed, **kwargs)

    monkeypatch.setattr(trainer, "fit", recording_fit)
    return policies, references


@pytest.mark.parametrize("lora", [False, True])
def test_tr_dpo_reference_follows_the_mixing_formula(tiny_model, pairs_path, tmp_path, monkeypatch, lora):
    """Synced every 2 of 5 steps with alpha 0.6: after steps 2 and 4, ref = 0.6 * policy + 0.4 * ref,
    recomputed here from the recorded policies by hand and by TRL's ``_sync_target_model``; the
    losses are the fixed reference's through step 2 and differ from step 3, the first after a sync."""
    cfg = dict(COMMON, lora=lora, epochs=2, max_steps=5, precompute_reference=False)
    fixed = train_dpo(DPOConfig(**cfg), tiny_model, [pairs_path], tmp_path / "fixed")
    policies, references = _record_tr_dpo(monkeypatch)
    synced = train_dpo(DPOConfig(sync_ref_model=True, ref_model_sync_steps=2, **cfg), tiny_model, [pairs_path],
                       tmp_path / "synced")
    assert len(policies) == len(references) == 5

    by_hand = _plain_weights(load_model(tiny_model))
    trl_ref, trl_policy = load_model(tiny_model), load_model(tiny_model)
    trl_weights = dict(trl_ref.named_parameters())  # updated in place
    for step, (policy, reference) in enumerate(zip(policies, references, strict=True), start=1):
        if step % 2 == 0:
            by_hand = {n: 0.6 * policy[n] + 0.4 * w for n, w in by_hand.items()}
            trl_policy.load_state_dict(policy, strict=False)  # the tied head shares the embedding's tensor
            SyncRefModelCallback._sync_target_model(trl_policy, trl_ref, 0.6)
        assert reference.keys() == by_hand.keys()
        for name, weight in reference.items():
            assert_close(weight, by_hand[name], rtol=1e-5, atol=1e-6, msg=name)
            assert_close(weight, trl_weights[name], rtol=0, atol=1e-7, msg=name)
    initial = _plain_weights(load_model(tiny_model))
    assert all(torch.equal(references[0][n], w) for n, w in initial.items())  # no sync at step 1
    assert not torch.equal(references[1]["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])

    fixed_losses, synced_losses = _losses(tmp_path / "fixed"), _losses(tmp_path / "synced")
    assert synced_losses[:2] == pytest.approx(fixed_losses[:2], abs=1e-6)
    assert all(abs(a - b) > 1e-5 for a, b in zip(synced_losses[2:], fixed_losses[2:], strict=True))
    assert [m["ref_syncs"] for m in read_metrics(tmp_path / "synced")] == [0, 1, 1, 2, 2]
    assert synced.metrics["ref_syncs"] == 2 and "ref_syncs" not in fixed.metrics


@pytest.mark.parametrize("lora", [False, True])
def test_tr_dpo_hard_update_every_step_makes_the_reference_the_last_policy(tiny_model, pairs_path, tmp_path, lora):
    """alpha=1 every step: each step's reference is the policy that step starts from, so every step
    logs policy == reference, rewards 0 and loss ln 2 (as DPO's first step does), while the policy
    still learns."""
    cfg = DPOConfig(lora=lora, max_steps=4, ref_model_mixup_alpha=1.0, ref_model_sync_steps=1, **TR_DPO, **COMMON)
    result = train_dpo(cfg, tiny_model, [pairs_path], tmp_path)
    for step in read_metrics(tmp_path):
        assert step["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
        assert step["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
        assert step["loss"] == pytest.approx(math.log(2), abs=1e-5) and step["grad_norm"] > 0
    assert result.metrics["ref_syncs"] == 4
    trained, initial = load_file(Path(result.model_path) / "model.safetensors"), _plain_weights(load_model(tiny_model))
    assert not torch.allclose(trained["model.layers.0.mlp.up_proj.weight"], initial["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("lora", [False, True])
def test_tr_dpo_resumes_with_its_moved_reference(tiny_model, pairs_path, tmp_path, lora):
    """Checkpoints every 2 steps, syncs every 3, a crash after step 5: the checkpoint of step 4 holds
    the reference synced at step 3, so the resumed run ends at the uninterrupted run's weights and
    losses; a checkpoint without it is refused rather than resumed from the unmoved reference."""
    cfg = DPOConfig(lora=lora, epochs=2, save_steps=2, ref_model_sync_steps=3, **TR_DPO, **COMMON)
    straight = train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "straight")

    with pytest.raises(Crash):
        train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "resumed", on_step=crash_after(5))
    latest = tmp_path / "resumed" / "checkpoints" / "step-000004"
    assert (latest / "reference.safetensors").exists()
    shutil.copytree(tmp_path / "resumed", tmp_path / "stripped")
    resumed = train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "resumed")
    a, b = load_file(Path(straight.model_path) / "model.safetensors"), load_file(Path(resumed.model_path) / "model.safetensors")
    for name in a:
        assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "straight"), abs=1e-6)
    assert resumed.metrics["ref_syncs"] == straight.metrics["ref_syncs"] == 2  # 8 steps: synced at 3 and 6

    (tmp_path / "stripped" / "checkpoints" / "step-000004" / "reference.safetensors").unlink()
    with pytest.raises(ValueError, match="holds no reference weights"):
        train_dpo(cfg, tiny_model, [pairs_path], tmp_path / "stripped")


def test_two_processes_sync_the_reference_as_one_does(tiny_model, other_model, tmp_path, monkeypatch):
    """Data parallelism: every process applies the same update to its copy of the reference (pi_0
    here), so two processes take the steps of one accumulating two micro-batches."""
    inputs = {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 10)], "reference_model": other_model}
    common = dict(COMMON, lora=True, epochs=2, max_steps=4, ref_model_sync_steps=2, **TR_DPO)
    two = _run("dpo", common | {"num_processes": 2}, inputs, tmp_path / "two", 2, monkeypatch)
    _run("dpo", common | {"grad_accum": 2}, inputs, tmp_path / "one", 1, monkeypatch)
    _assert_same_training(tmp_path / "one", tmp_path / "two")
    assert two["metrics"]["ref_syncs"] == 2 and two["metrics"]["reference_is_policy"] == 0


@pytest.mark.parametrize("precompute", [True, False])
def test_sharded_dpo_against_another_reference_matches_one_process(tiny_model, other_model, tmp_path, monkeypatch,
                                                                  precompute):
    """FSDP, full fine-tune: pi_0 sharded as the policy is, for the precomputed pass (before the
    policy loads) or every step."""
    inputs = {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 10)], "reference_model": other_model}
    common = dict(COMMON, lora=False, max_steps=3, precompute_reference=precompute)
    _run("dpo", common | {"num_processes": 2, "sharding": "fsdp"}, inputs, tmp_path / "two", 2, monkeypatch)
    _run("dpo", common | {"grad_accum": 2}, inputs, tmp_path / "one", 1, monkeypatch)
    _assert_same_training(tmp_path / "one", tmp_path / "two")
    assert read_metrics(tmp_path / "two")[0]["rewards/chosen"] != pytest.approx(0, abs=1e-3)  # pi_0 is not the policy


@pytest.mark.parametrize(("make", "message"), [
    (lambda: DPOConfig(sync_ref_model=True), "set precompute_reference=False"),
    (lambda: DPOConfig(loss_type=["simpo"], **TR_DPO), "sync_ref_model=True with loss_type"),
    (lambda: DPOConfig(loss_type=["sft"], **TR_DPO), "sync_ref_model=True with loss_type"),
    (lambda: DPOConfig(ref_model_mixup_alpha=0.5), "ref_model_mixup_alpha=0.5: read only by TR-DPO"),
    (lambda: DPOConfig(ref_model_sync_steps=64), "ref_model_sync_steps=64: read only by TR-DPO"),
    (lambda: DPOConfig(num_processes=2, sharding="fsdp", **TR_DPO), "sync_ref_model=True is not implemented for "
                                                                     "sharding=fsdp"),
    (lambda: DPOConfig(ref_model_mixup_alpha=0.0, **TR_DPO), "ref_model_mixup_alpha"),
    (lambda: DPOConfig(ref_model_mixup_alpha=1.5, **TR_DPO), "ref_model_mixup_alpha"),
    (lambda: DPOConfig(ref_model_sync_steps=0, **TR_DPO), "ref_model_sync_steps"),
])
def test_tr_dpo_settings_that_cannot_work_are_errors_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_tr_dpo_settings_are_accepted_where_they_are_read():
    cfg = DPOConfig(loss_type=["sigmoid", "sft"], ref_model_mixup_alpha=1.0, ref_model_sync_steps=1, save_steps=2,
                    **TR_DPO)
    assert (cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps) == (1.0, 1)
