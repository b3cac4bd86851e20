"""Batched answer generation with a local transformers model.

Prompts are sorted by length and left-padded so each ``generate`` call wastes little on padding.
The prompts of a batch are prefilled once; their key/value cache is then repeated for the K
samples of each prompt, which decode together (``num_return_sequences`` would prefill every
prompt K times).

Each sampled answer draws its tokens from a random stream of its own, seeded by the sampling seed,
its sample index k and its prompt, rather than from torch's global generator: an answer then does
not depend on which prompts share its batch or on the batch's place in the run, so a resumed run,
which generates only the answers it lacks, draws the ones an uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

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
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        cache = _prefill_once(model, ids, mask, cfg.num_samples)
        samplers = LogitsProcessorList()  # none: greedy
        if cfg.temperature > 0:
            uniforms = torch.stack([sample_uniforms(cfg.seed, k, texts[i], cfg.max_new_tokens)
                                    for i in idx for k in range(cfg.num_samples)])
            samplers.append(StreamSampler(uniforms.to(ids.device), ids.shape[1], cfg.temperature, cfg.top_p))
        out = model.generate(
            input_ids=ids.repeat_interleave(cfg.num_samples, 0),
            attention_mask=mask.repeat_interleave(cfg.num_samples, 0),
            past_key_values=cache,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,  # greedy, or the one token StreamSampler left a finite score
            logits_processor=samplers,
            temperature=None,
            top_p=None,
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


def sample_uniforms(seed: int, k: int, prompt_text: str, steps: int) -> torch.Tensor:
    """The ``steps`` uniforms in [0, 1) that pick the tokens of sample ``k`` of a rendered prompt,
    from a generator of its own seeded by (seed, k, prompt), whatever else is generated with it."""
    digest = hashlib.sha256(f"{seed}\0{k}\0{prompt_text}".encode()).digest()
    stream = torch.Generator().manual_seed(int.from_bytes(digest[:4], "big"))  # a CPU generator keeps 32 bits
    return torch.rand(steps, generator=stream)


class StreamSampler(LogitsProcessor):
    """Draws every row's next token with the row's own uniforms (``uniforms[row, t]`` picks its t-th
    generated token) and leaves only that token a finite score, so greedy decoding takes it.

    Temperature and top-p are transformers' own warpers; the pick is the inverse of the row's
    cumulative distribution, so a token is drawn with its probability, as ``torch.multinomial`` would."""

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, temperature: float, top_p: float):
        self.uniforms, self.prompt_width = uniforms, prompt_width
        self.warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        cdf = self.warpers(input_ids, scores).softmax(-1).cumsum(-1)
        # 1 - u is in (0, 1]: the first token whose cumulative probability reaches it has a probability above 0
        targets = (1 - self.uniforms[:, step : step + 1]) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, targets)
        return torch.full_like(scores, -math.inf).scatter_(1, tokens, 0.0)


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
