"""What SFT and DPO share: the config fields, LoRA setup, the optimisation loop, and saving.

The loop is deliberately small: AdamW, warm-up then cosine or linear decay, gradient
accumulation, clipping, and one metrics line per optimizer step in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import get_scheduler

from dpo_core.digest import digest_files


@dataclass
class TrainConfig:
    lora: bool = True  # train a LoRA adapter (False: full fine-tune)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    learning_rate: float = 2e-4
    epochs: int = 1
    batch_size: int = 4  # examples (SFT) or pairs (DPO) per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup_ratio: float = 0.1  # share of optimizer steps spent warming up
    scheduler: str = "cosine"  # "cosine" or "linear" decay after warm-up
    max_grad_norm: float = 1.0
    max_length: int = 512  # prompt + answer tokens
    seed: int = 0

    def __post_init__(self):
        if self.learning_rate <= 0 or self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("learning_rate must be > 0 and epochs, batch_size, grad_accum >= 1")
        if self.scheduler not in {"cosine", "linear"}:
            raise ValueError(f"scheduler must be 'cosine' or 'linear', got {self.scheduler!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class TrainResult:
    model_path: str  # merged full model (safetensors): what later stages load
    adapter_path: str | None  # the LoRA adapter alone, when lora=True
    digest: str  # of the saved weights
    metrics: dict  # last step's metrics plus totals


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def with_lora(model, cfg: TrainConfig):
    """Wrap ``model`` with a fresh LoRA adapter on every linear layer (QLoRA paper's finding: all
    linear layers beat attention-only at equal rank)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules="all-linear", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def fit(
    model,
    batches: Sequence,
    step_loss: Callable[[object], tuple[torch.Tensor, dict[str, float]]],
    cfg: TrainConfig,
    metrics_path: Path,
    on_step: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Optimise ``step_loss`` over ``batches`` for ``cfg.epochs``; return the last step's metrics."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    total_steps = math.ceil(len(batches) / cfg.grad_accum) * cfg.epochs
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    rng = random.Random(cfg.seed)
    model.train()
    step, last = 0, {}
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with metrics_path.open("w") as log:
        for epoch in range(cfg.epochs):
            order = list(range(len(batches)))
            rng.shuffle(order)
            for start in range(0, len(order), cfg.grad_accum):
                group = order[start : start + cfg.grad_accum]
                sums: dict[str, float] = {}
                for i in group:
                    loss, metrics = step_loss(batches[i])
                    (loss / len(group)).backward()
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v / len(group)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                last = sums | {"grad_norm": float(grad_norm), "learning_rate": lr, "epoch": epoch + (start + len(group)) / len(order)}
                log.write(json.dumps({"step": step} | last) + "\n")
                log.flush()
                if on_step:
                    on_step(step, total_steps, last)
    return last


def save_trained(model, tokenizer, cfg: TrainConfig, out_dir: Path, metrics: dict) -> TrainResult:
    """Save the adapter (LoRA) and the merged full model, both as safetensors, with the config."""
    out_dir = Path(out_dir)
    adapter_path = None
    if cfg.lora:
        adapter_path = out_dir / "adapter"
        model.save_pretrained(adapter_path, safe_serialization=True)
        model = model.merge_and_unload()
    model_path = out_dir / "model"
    model.save_pretrained(model_path, safe_serialization=True)
    tokenizer.save_pretrained(model_path)
    (out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    weights = sorted(model_path.glob("*.safetensors"))
    return TrainResult(str(model_path), str(adapter_path) if adapter_path else None, digest_files(weights), metrics)
