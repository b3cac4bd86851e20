"""Batched answer generation with a local transformers model.

Prompts are sorted by length and left-padded so each ``generate`` call wastes little on padding.
The prompts of a batch are prefilled once; their key/value cache is then repeated for the K
samples of each prompt, which decode together (``num_return_sequences`` would prefill every
prompt K times).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from dpo_core.common.chat import render_prompt
from dpo_core.inference.config import SamplingConfig


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int  # generated tokens up to and including the end-of-turn token


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[list[dict]],
    cfg: SamplingConfig,
    on_batch: Callable[[int, int], None] | None = None,
    on_prompt: Callable[[int, list[Generation]], None] | None = None,
) -> list[list[Generation]]:
    """Return ``cfg.num_samples`` generations for each chat in ``prompts``, in input order.
    ``on_prompt(index, generations)`` hears of each prompt as its batch finishes."""
    model.eval()
    texts = [render_prompt(tokenizer, p) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    results: list[list[Generation]] = [[] for _ in texts]
    eos = eos_ids(model.generation_config, tokenizer)
    tokenizer.padding_side = "left"
    for b, start in enumerate(range(0, len(order), cfg.batch_size)):
        idx = order[start : start + cfg.batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        cache = _prefill_once(model, ids, mask, cfg.num_samples)
        torch.manual_seed(cfg.seed * 100_003 + b)
        out = model.generate(
            input_ids=ids.repeat_interleave(cfg.num_samples, 0),
            attention_mask=mask.repeat_interleave(cfg.num_samples, 0),
            past_key_values=cache,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.temperature > 0,
            temperature=cfg.temperature if cfg.temperature > 0 else None,
            top_p=cfg.top_p if cfg.temperature > 0 else None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out[:, ids.shape[1] :].cpu()
        for row, tokens in enumerate(new):
            n = length_to_eos(tokens, eos)
            text = tokenizer.decode(tokens[:n], skip_special_tokens=True).strip()
            results[idx[row // cfg.num_samples]].append(Generation(text=text, n_tokens=n))
        for i in idx if on_prompt else ():
            on_prompt(i, results[i])
        if on_batch:
            on_batch(min(start + cfg.batch_size, len(order)), len(order))
    return results


def _prefill_once(model, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> DynamicCache | None:
    """The key/value cache of every prompt token but the last (``generate`` feeds that one),
    computed once and repeated ``repeats`` times along the batch."""
    if repeats == 1 or ids.shape[1] < 2:
        return None  # nothing shared: let generate prefill
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
          past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(repeats)
    return cache


def eos_ids(generation_config, tokenizer) -> list[int]:
    """Where an answer ends: the generation config's end-of-sequence ids plus the tokenizer's."""
    ids = generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def length_to_eos(tokens: torch.Tensor, eos_ids: list[int]) -> int:
    hits = torch.isin(tokens, torch.tensor(eos_ids)).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(tokens)
