"""Data-parallel training over the processes that ``accelerate launch`` starts: one per GPU, or
several CPU processes talking over gloo. Alone (no launcher) every call here is a no-op.

Each process trains on its share of every optimizer step's examples, and the gradients are
summed across processes before the step, so N processes with ``batch_size`` b take the same
steps as one process with ``batch_size`` b and ``grad_accum`` N. The sum is one bucketed
all-reduce after the step's micro-batches rather than a ``DistributedDataParallel`` wrapper: the
log-prob path runs the decoder and the vocabulary projection separately (``batching.py``), which
DDP's forward hook would not see, and LoRA's gradients are small enough that DDP's overlap of
communication with backward buys little. Accelerate supplies the launcher, the process group
(NCCL on GPUs, gloo on CPUs) and each process's device; ``torchrun`` starts the same processes.
With ``sharding="fsdp"`` the same processes shard the model instead (``sharding.py``): the data is
split the same way, and FSDP2 reduce-scatters the gradients in place of ``sum_gradients``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from accelerate import PartialState
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

_BUCKET_BYTES = 25 * 2**20  # DDP's default bucket: bounds the flat copy an all-reduce needs


@functools.cache
def state() -> PartialState:
    """The process's place in the launch; joins the process group when launched with several."""
    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    return state().process_index


def world_size() -> int:
    return state().num_processes


def is_main() -> bool:
    return state().is_main_process


def shard(items: Sequence) -> list:
    """This process's share of ``items``: every ``world_size()``-th one, from its rank."""
    return list(items[rank() :: world_size()])


def micro_batches(items: Sequence, batch_size: int, lockstep: bool = False) -> list[tuple[list, bool]]:
    """This process's share of ``items`` (``shard``) cut into batches of ``batch_size``, each with
    whether it is real. In ``lockstep`` (a sharded model: every forward and backward is a collective
    that all processes must join) a process with fewer batches than the busiest, rank 0, adds
    stand-ins (the first item, which every process holds) until it has as many; the caller runs them
    and throws their results away."""
    mine = shard(items)
    batches = [(mine[s : s + batch_size], True) for s in range(0, len(mine), batch_size)]
    if lockstep and world_size() > 1:
        busiest = math.ceil(math.ceil(len(items) / world_size()) / batch_size)
        batches += [(list(items[:1]), False)] * (busiest - len(batches))
    return batches


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def sum_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace each gradient by its sum over the processes (a process that saw no example this
    step takes part with zeros)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket, size = [], 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= _BUCKET_BYTES:
            _all_reduce(bucket)
            bucket, size = [], 0
    if bucket:
        _all_reduce(bucket)


def _all_reduce(grads: list[torch.Tensor]) -> None:
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for grad, summed in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(summed)


def sum_values(values: dict[str, float]) -> dict[str, float]:
    """Add up per-process metric sums key by key (a process may have seen none of the batch)."""
    if world_size() == 1:
        return values
    every: list[dict[str, float]] = [{} for _ in range(world_size())]
    dist.all_gather_object(every, values)
    total: dict[str, float] = {}
    for part in every:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + v
    return total


def gather(items: list) -> list:
    """Every process's ``items``, concatenated in rank order, on every process."""
    if world_size() == 1:
        return items
    every: list[list] = [[] for _ in range(world_size())]
    dist.all_gather_object(every, items)
    return [x for part in every for x in part]


def broadcast_parameters(params: Sequence[torch.nn.Parameter]) -> None:
    """Start every process from rank 0's weights, as DDP does."""
    if world_size() == 1:
        return
    device = state().device
    with torch.no_grad():
        for p in params:
            if p.device.type == device.type:
                dist.broadcast(p.data, src=0)
            else:  # NCCL moves GPU tensors only: a parameter still on the CPU (FSDP loads there) goes through the GPU
                staged = p.data.to(device)
                dist.broadcast(staged, src=0)
                p.data.copy_(staged)


def finish() -> None:
    """Leave the process group (a launcher's processes abort at exit otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()
