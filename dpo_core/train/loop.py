"""What SFT and DPO share: LoRA setup, the optimisation loop, checkpoints and saving (configs: config.py).

The loop (``fit``) is small and owned here rather than borrowed from ``transformers.Trainer``:
AdamW, warm-up then cosine or linear decay, gradient accumulation in which each micro-batch's
loss is its share of the whole step's mean (per-example terms divided by the step's examples,
per-token terms such as SFT's cross-entropy by the step's answer tokens, over every process), so 4
micro-batches of 1, or 2 processes of 2, equal one batch of 4; clipping, bf16 autocast where the
device has it or the config asks, evaluation, checkpoints (every N steps, or by the time rule of
``CheckpointClock``), and resume from the last checkpoint with optimizer, scheduler and RNG state.
One metrics line per optimizer step goes to ``metrics.jsonl``. With ``sharding="fsdp"`` the same
loop drives a model sharded by FSDP2 (``sharding.py``): its checkpoints are sharded, and the model
is gathered whole to be saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from dpo_core.common.digest import digest_files
from dpo_core.common.models import save_model_folder
from dpo_core.train import distributed, sharding
from dpo_core.train.config import TrainConfig
from dpo_core.train.optim import make_optimizer

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform == "linux" else None


@dataclass
class TrainResult:
    model_path: str  # merged full model (safetensors): what later stages load
    adapter_path: str | None  # the LoRA adapter alone, when lora=True
    digest: str  # of the saved weights
    metrics: dict  # last step's metrics plus totals
    precision: str = "fp32"  # what training ran in: "bf16" (autocast) or "fp32", as resolved_precision gives it


@dataclass(frozen=True)
class Totals:
    """What a step's (or an evaluation's) means are over: all of its examples, on every process and
    in every micro-batch, and their answer tokens. ``step_loss`` divides its sums by these rather
    than by its own micro-batch's counts, so the micro-batches' shares add up to the step's mean
    however the examples are split (a token mean per micro-batch weighs a short answer's tokens more)."""

    examples: int
    tokens: int

    @classmethod
    def of(cls, examples: Sequence, answer_tokens: Callable[[object], int]) -> Totals:
        return cls(len(examples), sum(answer_tokens(e) for e in examples))


def release_freed_memory() -> None:
    """Hand memory freed by the last step back to the OS. glibc keeps freed heap blocks for
    reuse, and activations of varying shapes fragment that heap until the resident size is
    several times what is live; ``malloc_trim`` costs milliseconds per step."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def device() -> torch.device:
    """This process's GPU (its local rank's, under a launcher), else the CPU."""
    return distributed.state().device


def load_device(cfg: TrainConfig) -> torch.device | None:
    """Where a trainer loads its model: None, ``load_model``'s default (this process's device), or
    under FSDP the CPU, from which ``fully_shard`` moves only this process's shards to the device
    (so the whole model, the thing that may not fit one GPU, never lands on one)."""
    return torch.device("cpu") if cfg.sharding == "fsdp" else None


def prepare_for_training(model, cfg: TrainConfig):
    """Move to the device, turn on gradient checkpointing if asked, wrap with a fresh LoRA adapter
    on every linear layer when ``cfg.lora`` (QLoRA paper: all linear layers beat attention-only at
    equal rank), and shard over the processes when ``cfg.sharding`` is fsdp (``fully_shard`` moves
    each process's shards to its device; load the model on ``load_device``)."""
    if cfg.sharding == "none":
        model = model.to(device())
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    if cfg.lora:
        model = add_lora(model, cfg)
        model.enable_input_require_grads()
    return sharding.shard_model(model) if cfg.sharding == "fsdp" else model


def add_lora(model, cfg: TrainConfig):
    """``model`` wrapped with a fresh LoRA adapter of ``cfg``'s rank on every linear layer."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


_BF16_FLAGS = {"amx_bf16": "AMX_BF16", "avx512_bf16": "AVX512_BF16"}  # /proc/cpuinfo flag -> instruction set


def bf16_units_in(flags: set[str]) -> str | None:
    """The native bf16 matrix instructions among a CPU's ``flags`` (AMX first), or None."""
    return next((name for flag, name in _BF16_FLAGS.items() if flag in flags), None)


@functools.cache
def cpu_bf16_units() -> str | None:
    """This CPU's native bf16 matrix instructions ("AMX_BF16" or "AVX512_BF16"), or None: from
    /proc/cpuinfo's flags on Linux, else torch's own probe of the CPU. Without them bf16 matmuls
    are emulated and slower than fp32; with them about 4x fp32 (NOTES: 880 vs 210 GFLOP/s)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = {f for line in cpuinfo if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    except OSError:
        probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
        flags = {flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()}
    return bf16_units_in(flags)


def resolved_precision(cfg: TrainConfig) -> str:
    """"bf16" where asked for or, with "auto", on a GPU that supports it or a CPU with native bf16
    matrix units (``cpu_bf16_units``); else "fp32"."""
    dev = device()
    if cfg.precision != "auto":
        return cfg.precision
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if dev.type == "cpu" and cpu_bf16_units() else "fp32"


def describe_precision(cfg: TrainConfig) -> str:
    """One log line on the precision training runs in, and why."""
    precision = resolved_precision(cfg)
    if cfg.precision != "auto":
        why = "as configured"
    elif device().type == "cpu":
        why = f"auto: this CPU has {cpu_bf16_units()}" if precision == "bf16" else "auto: no bf16 units on this CPU"
    else:
        why = f"auto on {device().type}"
    mode = "bf16 autocast (fp32 weights, log-probs, losses and AdamW)" if precision == "bf16" else "fp32"
    return f"precision: {mode}, {why}"


def autocast(cfg: TrainConfig):
    """bf16 autocast when ``resolved_precision`` says bf16, else nothing (fp32)."""
    if resolved_precision(cfg) == "bf16":
        return torch.autocast(device().type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(
    model,
    examples: Sequence,
    make_batch: Callable[[list], object],
    step_loss: Callable[[object, Totals], tuple[torch.Tensor, dict[str, float]]],
    answer_tokens: Callable[[object], int],
    cfg: TrainConfig,
    out_dir: Path,
    on_step: Callable[[int, int, dict], None] | None = None,
    eval_examples: Sequence = (),
    after_step: Callable[[int], dict[str, float]] | None = None,
    checkpointed: Mapping[str, torch.nn.Module] | None = None,
) -> dict:
    """Optimise ``step_loss`` over ``examples``.

    ``step_loss(batch, totals)`` returns the batch's share of the step's mean loss and of each of
    its metrics: its sums divided by the step's ``Totals`` (``answer_tokens(example)`` says what one
    example adds to the token count), so the loop only adds shares up over micro-batches and
    processes.

    Each optimizer step takes ``batch_size * grad_accum * processes`` examples from a per-epoch
    permutation seeded by ``seed + epoch``, so a resumed run sees exactly the data an
    uninterrupted one would. Each process trains on every ``processes``-th of them; the main
    process alone writes metrics and checkpoints.

    ``after_step(step)`` runs on every process after each optimizer step, before evaluation and the
    checkpoint (TR-DPO's reference update), and returns metrics for the step's line.
    ``checkpointed``: modules besides ``model`` that change during training (that reference), saved
    whole with each checkpoint as NAME.safetensors and restored on resume.
    """
    out_dir = Path(out_dir)
    sharded = sharding.is_sharded(model)  # gradients reduce-scattered by FSDP; every process in lockstep
    params = [p for p in model.parameters() if p.requires_grad]
    if not sharded:
        distributed.broadcast_parameters(params)
    optimizer = make_optimizer(params, cfg.learning_rate, cfg.max_grad_norm, cfg.optimizer_in_backward)
    group = cfg.batch_size * cfg.grad_accum * distributed.world_size()
    steps_per_epoch = math.ceil(len(examples) / group)
    total_steps = min(steps_per_epoch * cfg.epochs, cfg.max_steps or math.inf)
    scheduler = get_scheduler(cfg.scheduler, optimizer.lead, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    checkpointed = checkpointed or {}
    step = resumed_from = _resume(model, optimizer, scheduler, out_dir, checkpointed)
    metrics_path = out_dir / "metrics.jsonl"
    if distributed.is_main():
        print(describe_precision(cfg), flush=True)
        if resumed_from:
            print(f"resumed from the checkpoint of step {step} of {total_steps}: steps 1-{step} are not trained "
                  "again", flush=True)
        _truncate_metrics(metrics_path, step)
    clock = CheckpointClock(cfg.save_steps, cfg.checkpoint_interval_s)
    last: dict = {}
    started = time.perf_counter()
    model.train()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.closing(optimizer))
        log = stack.enter_context(metrics_path.open("a")) if distributed.is_main() else None
        while step < total_steps:
            epoch, index = divmod(step, steps_per_epoch)
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
            chosen = [examples[i] for i in order[index * group : (index + 1) * group]]
            totals = Totals.of(chosen, answer_tokens)  # every process holds the whole step's examples
            sums: dict[str, float] = {}
            for items, real in distributed.micro_batches(chosen, cfg.batch_size, lockstep=sharded):
                with autocast(cfg):
                    loss, metrics = step_loss(make_batch(items), totals)
                (loss if real else loss * 0.0).backward()  # a stand-in only keeps FSDP's collectives in step
                if real:
                    _add(sums, metrics)
            sums = distributed.sum_values(sums)
            if not sharded:
                distributed.sum_gradients(params)
            lr = scheduler.get_last_lr()[0]
            grad_norm = optimizer.step()
            scheduler.step()
            release_freed_memory()
            step += 1
            last = sums | {"grad_norm": grad_norm, "learning_rate": lr, "epoch": step / steps_per_epoch}
            if after_step:
                last |= after_step(step)
            if eval_examples and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == total_steps):
                last |= evaluate_loss(model, eval_examples, make_batch, step_loss, answer_tokens, cfg)
            if log is not None:  # before the checkpoint: a run resumed from it has this step's line
                log.write(json.dumps({"step": step} | last) + "\n")
                log.flush()
            if step < total_steps and clock.due(step):
                writing = time.perf_counter()
                _save_checkpoint(model, optimizer, scheduler, step, out_dir, cfg.save_total_limit, checkpointed)
                clock.written(time.perf_counter() - writing)
            if on_step and log is not None:
                on_step(step, total_steps, last)
    return last | {"train_runtime": time.perf_counter() - started, "resumed_from_step": resumed_from,
                   "checkpoints_written": clock.count, "checkpoint_seconds": clock.seconds}


class CheckpointClock:
    """When to checkpoint: every ``save_steps`` steps when set; else once ``interval_s`` of training
    has passed since the last checkpoint (or the start) and 20 times as long as the last one took to
    write. Checkpoints then cost at most 5% of training time, a crash loses at most that much work,
    and a run shorter than ``interval_s`` writes none: restarting it costs less than checkpointing.
    Processes agree through the main process's clock (a sharded save needs every process)."""

    MAX_SHARE = 0.05  # of training time spent writing checkpoints

    def __init__(self, save_steps: int, interval_s: float):
        self.save_steps, self.interval_s = save_steps, interval_s
        self.since, self.last_cost = time.perf_counter(), 0.0
        self.count, self.seconds = 0, 0.0

    def due(self, step: int) -> bool:
        if self.save_steps:
            return step % self.save_steps == 0
        if not self.interval_s:
            return False
        waited = time.perf_counter() - self.since >= max(self.interval_s, self.last_cost / self.MAX_SHARE)
        return distributed.sum_values({"due": float(waited and distributed.is_main())})["due"] > 0

    def written(self, seconds: float) -> None:
        self.since, self.last_cost = time.perf_counter(), seconds
        self.count, self.seconds = self.count + 1, self.seconds + seconds


@torch.no_grad()
def evaluate_loss(model, examples: Sequence, make_batch, step_loss, answer_tokens, cfg: TrainConfig) -> dict[str, float]:
    """``step_loss`` metrics over all of ``examples`` as if one step (each process takes its share),
    prefixed ``eval_`` as TRL logs them."""
    was_training = model.training
    model.eval()
    totals = Totals.of(examples, answer_tokens)
    sums: dict[str, float] = {}
    for items, real in distributed.micro_batches(examples, cfg.batch_size, lockstep=sharding.is_sharded(model)):
        with autocast(cfg):
            _, metrics = step_loss(make_batch(items), totals)
        if real:
            _add(sums, metrics)
    model.train(was_training)
    return {f"eval_{k}": v for k, v in distributed.sum_values(sums).items()}


def _add(sums: dict[str, float], shares: dict[str, float]) -> None:
    """Add a micro-batch's metric shares into the running sums, key by key."""
    for k, v in shares.items():
        sums[k] = sums.get(k, 0.0) + v


def save_trained(model, tokenizer, cfg: TrainConfig, out_dir: Path, metrics: dict) -> TrainResult:
    """Save the adapter (LoRA) and the merged full model, both as safetensors, with the config and
    the precision it ran in (the main process writes, a sharded model first gathered whole onto it;
    every process returns the result)."""
    out_dir = Path(out_dir)
    adapter_path = out_dir / "adapter" if cfg.lora else None
    model_path = out_dir / "model"
    precision = resolved_precision(cfg)
    if sharding.is_sharded(model):
        model = sharding.unsharded_copy(model, lambda copy: add_lora(copy, cfg) if cfg.lora else copy)
    if distributed.is_main():
        if adapter_path:
            model.save_pretrained(adapter_path, safe_serialization=True)
            model = model.merge_and_unload()
        save_model_folder(model, tokenizer, model_path)
        (out_dir / "train_config.json").write_text(json.dumps(asdict(cfg) | {"resolved_precision": precision},
                                                              indent=2))
    distributed.barrier()
    weights = sorted(model_path.glob("*.safetensors"))
    return TrainResult(str(model_path), str(adapter_path) if adapter_path else None, digest_files(weights), metrics,
                       precision)


_SHARDED = "sharded"  # a checkpoint's folder of torch.distributed.checkpoint shards (sharding=fsdp)


def _save_checkpoint(model, optimizer, scheduler, step: int, out_dir: Path, keep: int,
                     checkpointed: Mapping[str, torch.nn.Module]) -> None:
    """Trainable weights, the ``checkpointed`` modules' weights, optimizer, scheduler and RNG state,
    written to a temp folder that the main process then renames: the weights and optimizer by the
    main process alone, or with a sharded model by every process its own shards. The others wait,
    so none runs ahead of a checkpoint it may resume from."""
    root = out_dir / "checkpoints"
    tmp = root / f".step-{step:06d}"
    if sharding.is_sharded(model):
        sharding.save_state(model, optimizer.lead, tmp / _SHARDED)  # every process; returns when all have written
    if not distributed.is_main():
        distributed.barrier()
        return
    tmp.mkdir(parents=True, exist_ok=True)
    state = {"scheduler": scheduler.state_dict(), "cpu_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if not sharding.is_sharded(model):
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, tmp / "trainable.safetensors")
        state["optimizer"] = optimizer.state_dict()
    for name, module in checkpointed.items():  # named_parameters lists a tied weight once, as safetensors needs
        save_file({n: p.detach().cpu().contiguous() for n, p in module.named_parameters()}, tmp / f"{name}.safetensors")
    torch.save(state, tmp / "state.pt")
    tmp.rename(root / f"step-{step:06d}")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    distributed.barrier()


def _resume(model, optimizer, scheduler, out_dir: Path, checkpointed: Mapping[str, torch.nn.Module]) -> int:
    """Load the newest checkpoint under ``out_dir``, if any; return the step it was taken at."""
    if distributed.is_main():  # a checkpoint cut short by a crash never got its name: drop what it wrote
        for partial in (out_dir / "checkpoints").glob(".step-*"):
            shutil.rmtree(partial)
    distributed.barrier()
    checkpoints = sorted((out_dir / "checkpoints").glob("step-*"))
    if not checkpoints:
        return 0
    latest = checkpoints[-1]
    sharded = sharding.is_sharded(model)
    if sharded != (latest / _SHARDED).exists():
        raise ValueError(f"checkpoint {latest} was written with sharding={'none' if sharded else 'fsdp'}, and this run "
                         f"has sharding={'fsdp' if sharded else 'none'}: resume with the same sharding, or delete "
                         "the checkpoints folder to restart")
    if sharded:
        sharding.load_state(model, optimizer.lead, latest / _SHARDED)
    else:
        weights = load_file(latest / "trainable.safetensors")
        missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
        if missing:
            raise ValueError(f"checkpoint {latest} does not match this model (missing {missing[:3]}); delete it to "
                             "restart")
        model.load_state_dict(weights, strict=False)
    for name, module in checkpointed.items():
        if not (latest / f"{name}.safetensors").exists():
            raise ValueError(f"checkpoint {latest} holds no {name} weights, which this run changes as it trains (it "
                             "was written by a run with other settings): delete the checkpoints folder to restart")
        with torch.no_grad():
            module.load_state_dict(load_file(latest / f"{name}.safetensors", device=str(device())), strict=False)
    state = torch.load(latest / "state.pt", weights_only=True)
    if not sharded:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(latest.name.split("-")[1])


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step, so the log reads as one uninterrupted run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
