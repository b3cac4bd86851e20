"""Stage 4, DPO: train the policy on preference pairs against a frozen reference.

With LoRA (the default) the reference is the same network with its adapter disabled, so only
one copy of the weights is held. Reference log-probs are computed once before training: they
never change, and a second forward per step would cost a third of the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dpo_core.batching import Batch, answer_token_logps, collate
from dpo_core.chat import encode_pair
from dpo_core.data.io import read_jsonl
from dpo_core.dpo.losses import LOSSES, implicit_rewards
from dpo_core.models import load_model, load_tokenizer, resolve_model
from dpo_core.records import PreferencePair
from dpo_core.training import TrainConfig, TrainResult, fit, save_trained, seed_everything, with_lora


@dataclass
class DPOConfig(TrainConfig):
    """``model_ref`` of train_dpo is both the starting policy and the reference (the SFT model)."""

    beta: float = 0.1  # strength of the KL anchor to the reference (DPO paper's beta)
    loss_type: str = "sigmoid"

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in LOSSES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of {sorted(LOSSES)}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@dataclass
class PairBatch:
    """Chosen and rejected answers of B pairs stacked as one batch of 2B rows (chosen first)."""

    batch: Batch
    ref_chosen: torch.Tensor  # (B,)
    ref_rejected: torch.Tensor  # (B,)


def train_dpo(
    cfg: DPOConfig, model_ref: str, pairs_path: Path, out_dir: Path,
    on_step: Callable[[int, int, dict], None] | None = None,
) -> TrainResult:
    seed_everything(cfg.seed)
    pairs = [PreferencePair(**r) for r in read_jsonl(pairs_path)]
    if not pairs:
        raise ValueError(f"{pairs_path} holds no preference pairs: collect feedback on more prompts")
    path = resolve_model(model_ref)
    tokenizer, policy = load_tokenizer(path), load_model(path)
    if cfg.lora:
        policy = with_lora(policy, cfg)
        reference = None
    else:
        reference = load_model(path).eval().requires_grad_(False)
    batches = _make_batches(pairs, tokenizer, cfg)
    _attach_reference_logps(batches, policy, reference)
    loss_fn = LOSSES[cfg.loss_type]

    def step_loss(pb: PairBatch):
        logps, mean_logits = answer_token_logps(policy, pb.batch)
        summed = logps.sum(-1)
        n = len(pb.ref_chosen)
        pc, pr = summed[:n], summed[n:]
        losses = loss_fn(pc, pr, pb.ref_chosen, pb.ref_rejected, cfg.beta)
        rc = implicit_rewards(pc, pb.ref_chosen, cfg.beta)
        rr = implicit_rewards(pr, pb.ref_rejected, cfg.beta)
        metrics = {
            "loss": losses.mean().item(),
            "rewards/chosen": rc.mean().item(),
            "rewards/rejected": rr.mean().item(),
            "rewards/accuracies": (rc > rr).float().mean().item(),
            "rewards/margins": (rc - rr).mean().item(),
            "logps/chosen": pc.detach().mean().item(),
            "logps/rejected": pr.detach().mean().item(),
            "logits/chosen": mean_logits[:n].mean().item(),
            "logits/rejected": mean_logits[n:].mean().item(),
        }
        return losses.mean(), metrics

    metrics = fit(policy, batches, step_loss, cfg, Path(out_dir) / "metrics.jsonl", on_step)
    metrics["train_pairs"] = len(pairs)
    return save_trained(policy, tokenizer, cfg, out_dir, metrics)


def _make_batches(pairs: list[PreferencePair], tokenizer, cfg: DPOConfig) -> list[PairBatch]:
    encoded = []
    for p in pairs:
        chosen = encode_pair(tokenizer, p.prompt, p.chosen[0]["content"], cfg.max_length)
        rejected = encode_pair(tokenizer, p.prompt, p.rejected[0]["content"], cfg.max_length)
        encoded.append((chosen, rejected))
    encoded.sort(key=lambda cr: max(len(cr[0][0]) + len(cr[0][1]), len(cr[1][0]) + len(cr[1][1])))
    batches = []
    for i in range(0, len(encoded), cfg.batch_size):
        group = encoded[i : i + cfg.batch_size]
        rows = [c for c, _ in group] + [r for _, r in group]
        empty = torch.zeros(len(group))
        batches.append(PairBatch(collate(rows, tokenizer.pad_token_id), empty, empty))
    return batches


@torch.no_grad()
def _attach_reference_logps(batches: list[PairBatch], policy, reference) -> None:
    """Fill each batch's reference log-probs: the frozen copy, or the policy without its adapter."""
    ctx = policy.disable_adapter() if reference is None else contextlib.nullcontext()
    model = policy if reference is None else reference
    was_training = model.training
    model.eval()
    with ctx:
        for pb in batches:
            logps, _ = answer_token_logps(model, pb.batch)
            summed = logps.sum(-1)
            n = len(summed) // 2
            pb.ref_chosen, pb.ref_rejected = summed[:n], summed[n:]
    model.train(was_training)
