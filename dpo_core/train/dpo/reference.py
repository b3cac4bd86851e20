"""Reference log-probabilities, computed once and kept on disk; and TR-DPO's moving reference.

A fixed reference never changes during training, so its log-probs over the training pairs are
computed in one no-grad pass before the first step, and stored under a key made of the reference
model's fingerprint, the precision it ran in (bf16 autocast or fp32, as training runs: bf16
rounding moves a sequence's log-prob by some 1e-3 nats, as much as DPO's first rewards) and the
digest of the exact token ids (which covers the data, the chat template and the truncation). A
later run with the same key, a new beta or loss say, reads them back instead of running the
reference again.

TR-DPO (``sync_ref_model``) moves the reference towards the policy during training instead
(``soft_update``), so its log-probs are computed every step by a full frozen copy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dpo_core.common.digest import digest_json
from dpo_core.train import distributed, sharding
from dpo_core.train.batching import answer_token_logps, collate, to_device
from dpo_core.train.loop import device

Example = tuple[list[int], list[list[int]]]  # (prompt_ids, [chosen_ids, rejected_ids])


def reference_key(model_fingerprint: str, examples: Sequence[Example], precision: str) -> str:
    """``precision``: "fp32" or "bf16", as ``loop.resolved_precision`` gives it."""
    return digest_json(["ref-logps-v1", model_fingerprint, precision, [list(e) for e in examples]])


def cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "reference-logps" / f"{key}.safetensors"


@torch.no_grad()
def pair_logps(model, batch, disable_adapter: bool = False) -> torch.Tensor:
    """(B, 2) summed log-probs of [chosen, rejected] for one collated batch of pairs, with a PEFT
    model's adapter off when ``disable_adapter``."""
    with model.disable_adapter() if disable_adapter else contextlib.nullcontext():
        logps, _ = answer_token_logps(model, batch)
    return logps.sum(-1).view(-1, 2)


@torch.no_grad()
def compute_reference_logps(model, examples: Sequence[Example], pad_id: int, batch_size: int,
                            share_prefix: bool = True, disable_adapter: bool = False) -> torch.Tensor:
    """(N, 2) summed log-probs of [chosen, rejected] for every example under ``model``, run in
    eval mode and, for a PEFT model whose adapter stands for the policy, with the adapter off.
    Under a launcher each process runs its share (a sharded model's processes in lockstep) and all
    get the whole table."""
    was_training = model.training
    model.eval()
    rows: list[tuple[int, torch.Tensor]] = []
    lockstep = sharding.is_sharded(model)
    for ids, real in distributed.micro_batches(range(len(examples)), batch_size, lockstep):
        batch = to_device(collate([examples[i] for i in ids], pad_id, share_prefix), device())
        logps = pair_logps(model, batch, disable_adapter).float().cpu()
        if real:
            rows += zip(ids, logps, strict=True)
    model.train(was_training)
    table = torch.zeros(len(examples), 2)
    for i, logps in distributed.gather(rows):
        table[i] = logps
    return table


def load_or_compute(path: Path, compute) -> tuple[torch.Tensor, bool]:
    """The cached tensor at ``path`` (and True), or ``compute()`` saved there atomically (and False)."""
    if path.exists():
        return load_file(path)["logps"], True
    logps = compute()
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"logps": logps.contiguous()}, tmp)
        tmp.replace(path)
    return logps, False


@torch.no_grad()
def soft_update(reference, policy, alpha: float) -> None:
    """TR-DPO's soft update (Gorbatovski et al. 2024), ``ref = alpha * policy + (1 - alpha) * ref``
    parameter by parameter in place, the operations of TRL's ``SyncRefModelCallback``; a PEFT
    policy contributes its effective weights (base + LoRA delta), since its base alone never moves."""
    policy_weights = effective_weights(policy)
    for name, ref in reference.named_parameters():
        ref.mul_(1.0 - alpha).add_(policy_weights[name], alpha=alpha)


@torch.no_grad()
def effective_weights(policy) -> dict[str, torch.Tensor]:
    """The weights ``policy`` computes with, under the plain model's parameter names: for a PEFT
    model each LoRA layer's base weight plus its active adapters' deltas (peft's
    ``get_delta_weight``, what ``merge_adapter`` would add, without touching the base)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(policy, PeftModel):
        return dict(policy.named_parameters())
    model = policy.get_base_model()
    weights = dict(model.named_parameters())  # a LoRA layer's own names (base_layer, lora_A, ...) go unread
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            weights[f"{name}.weight"] = base.weight + sum(module.get_delta_weight(a) for a in module.active_adapters)
            if base.bias is not None:
                weights[f"{name}.bias"] = base.bias
    return weights
