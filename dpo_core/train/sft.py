"""Stage 3, SFT: fine-tune on the best sampled answers (rejection-sampling fine-tuning).

With no human-written answers, the DPO paper's recipe is to fine-tune on preferred completions
first; here those are the highest-scored candidates that follow all (``min_score``) of their
prompt's instructions. The loss is the mean cross-entropy over the answer tokens of each
optimizer step (every micro-batch and process together), so every token weighs the same however
the step is split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from dpo_core.common.chat import encode
from dpo_core.common.io import read_jsonl
from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.common.records import JudgedCandidate, PromptRecord
from dpo_core.train.batching import Batch, answer_token_logps, collate, to_device
from dpo_core.train.config import SFTConfig
from dpo_core.train.loop import Totals, TrainResult, device, fit, prepare_for_training, save_trained


def select_sft_examples(prompts_path: Path, candidates_path: Path, min_score: float) -> list[tuple[list, str]]:
    """(messages, answer) for the best candidate of each prompt that reaches ``min_score``."""
    prompts = {r["id"]: PromptRecord(**r) for r in read_jsonl(prompts_path)}
    best: dict[str, JudgedCandidate] = {}
    for row in read_jsonl(candidates_path):
        c = JudgedCandidate(**row)
        if c.score >= min_score and (c.prompt_id not in best or c.score > best[c.prompt_id].score):
            best[c.prompt_id] = c
    return [(prompts[pid].messages, c.text) for pid, c in sorted(best.items())]


def train_sft(
    cfg: SFTConfig, model_ref: str, prompts_path: Path, candidates_path: Path, out_dir: Path,
    on_step: Callable[[int, int, dict], None] | None = None,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    examples = select_sft_examples(prompts_path, candidates_path, cfg.min_score)
    if not examples:
        raise ValueError(
            f"no candidate reached min_score={cfg.min_score}: lower min_score or sample more candidates"
        )
    path = resolve_model(model_ref)
    tokenizer = load_tokenizer(path)
    model = prepare_for_training(load_model(path), cfg)
    encoded = [encode(tokenizer, m, [a], cfg.max_length) for m, a in examples]

    def make_batch(items):
        return to_device(collate(items, tokenizer.pad_token_id), device())

    def step_loss(batch: Batch, totals: Totals):
        logps, _ = answer_token_logps(model, batch)
        loss = -logps.sum() / totals.tokens  # this batch's share of the step's cross-entropy per answer token
        return loss, {"loss": loss.item(), "num_tokens": float(batch.num_tokens)}

    def answer_tokens(example) -> int:
        _, (answer,) = example
        return len(answer)

    metrics = fit(model, encoded, make_batch, step_loss, answer_tokens, cfg, out_dir, on_step)
    metrics["train_examples"] = len(examples)
    return save_trained(model, tokenizer, cfg, out_dir, metrics)
