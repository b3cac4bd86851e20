"""Sharded training with PyTorch's FSDP2 (``TrainConfig.sharding="fsdp"``): each of N processes
holds 1/N of every weight, gradient and AdamW state, and gathers a unit's full weights only while
it runs, so a full fine-tune of a model N times one device's share fits.

``fully_shard`` wraps each decoder layer and then the root (embeddings, final norm, vocabulary
projection) over a 1-D mesh of all processes, which are launched as for data parallelism
(``distributed.py``) and split each step's examples the same way. Beyond stock FSDP2:

  * the answer-only vocabulary projection (``batching.py``) runs the decoder and the head outside
    the model's ``forward``, so that computation is registered as a forward method of the root
    (``register_fsdp_forward_method``): the root's weights, the head's among them, are gathered
    whole around it and their gradients reduce-scattered into the shards after backward. A tied
    head (SmolLM2's ``lm_head`` is ``embed_tokens``) is one FSDP parameter of the root, used twice.
  * gradients are summed over processes, not averaged: each process's loss is already its share
    of the step's mean, as in data parallelism (and summed with a plain SUM: gloo has no PREMUL_SUM).
  * every forward and backward is a collective, so a process short of examples in a step's tail
    runs stand-in batches whose loss it zeroes (``distributed.micro_batches(lockstep=True)``).

Checkpoints are written sharded by ``torch.distributed.checkpoint`` (each process its shards of
the trainable weights and of AdamW's state); the final model is gathered whole onto the main
process, which saves the usual safetensors folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

from dpo_core.train import distributed
from dpo_core.train.batching import SHARDED_FORWARD, base_model, decoder_and_head_logps


def is_sharded(model) -> bool:
    """Whether ``shard_model`` sharded ``model``: its transformers model (FSDP's root) is an FSDPModule."""
    return isinstance(base_model(model), FSDPModule)


def shard_model(model):
    """Shard ``model`` in place over every process: each decoder layer (the classes transformers
    lists in ``_no_split_modules``), then the root. Parameters become DTensors, so build the
    optimizer after this."""
    if distributed.world_size() < 2:
        raise ValueError("sharding=fsdp needs 2 or more processes: launch with num_processes >= 2 (accelerate "
                         "launch or torchrun), or set sharding=none")
    # fully_shard keeps each process's slice of its own copy: start all from rank 0's (a fresh LoRA adapter)
    distributed.broadcast_parameters([p for p in model.parameters() if p.requires_grad])
    root = base_model(model)  # FSDP's root: the transformers model, inside a PEFT wrapper if any
    layer_classes = set(getattr(root, "_no_split_modules", None) or ())
    layers = [m for m in root.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"{type(root).__name__} names no decoder layer classes (_no_split_modules): FSDP would "
                         "shard it as one unit and gather it whole; use sharding=none")
    mesh = init_device_mesh(distributed.state().device.type, (distributed.world_size(),))
    for module in [*layers, root]:
        fully_shard(module, mesh=mesh)
        module.set_gradient_divide_factor(1.0)  # sum: each process's loss is its share of the step's mean
        module.set_force_sum_reduction_for_comms(True)  # as a plain SUM (gloo has no PREMUL_SUM)
    setattr(root, SHARDED_FORWARD, functools.partial(decoder_and_head_logps, root))
    register_fsdp_forward_method(root, SHARDED_FORWARD)
    setattr(root, SHARDED_FORWARD, functools.partial(_reshard_without_backward, root, getattr(root, SHARDED_FORWARD)))
    return model


def _reshard_without_backward(root: FSDPModule, forward, *args):
    """``forward``, then, when no backward will follow (no grad: evaluation, reference log-probs),
    the root's weights sharded again. FSDP2 keeps the root's weights gathered after forward for
    the backward that usually follows; left so, they would stay gathered, and modules would hold
    the gathered tensors in place of the sharded parameters the optimizer and checkpoints expect."""
    out = forward(*args)
    if not torch.is_grad_enabled():
        root.reshard()
    return out


def _trainable(model, state: dict) -> dict:
    """The entries of ``state`` that training changes (LoRA: the adapter; else every weight)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def save_state(model, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every process writes its shards of the trainable weights and of the optimizer's state."""
    weights, optim = get_state_dict(model, optimizer)
    dcp.save({"model": _trainable(model, weights), "optimizer": optim}, checkpoint_id=folder)


def load_state(model, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Read what ``save_state`` wrote back into the shards (it may have been written by another
    number of processes: DCP reshards)."""
    weights, optim = get_state_dict(model, optimizer)
    state = {"model": _trainable(model, weights), "optimizer": optim}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))


def unsharded_copy(model, add_adapter) -> nn.Module | None:
    """The model gathered whole, on the main process's CPU (None on the others, which join the
    gather): a copy built on the meta device, so no second set of weights is allocated, takes the
    gathered tensors as its own. ``add_adapter(copy)`` gives it the same LoRA wrapper, if any."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not distributed.is_main():
        return None
    from transformers import AutoModelForCausalLM

    root = base_model(model)
    with torch.device("meta"):
        copy = add_adapter(AutoModelForCausalLM.from_config(root.config))
    copy.load_state_dict(full, assign=True)
    base_model(copy).tie_weights()  # assign=True gave the tied head its own tensor: share the embedding's again
    base_model(copy).generation_config = root.generation_config
    return copy
