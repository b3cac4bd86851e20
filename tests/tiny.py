"""Tiny random-initialised Llamas: with the embedded default's real tokenizer and chat template, or
a base model whose small byte-level tokenizer has no chat template and none of its tokens."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from dpo_core.common.io import write_jsonl
from dpo_core.common.models import ensure_embedded_default, load_tokenizer

CHAT = [{"role": "user", "content": "Write one word in lowercase."}]


def write_uneven_pairs(path: Path) -> Path:
    """8 pairs whose chosen answers run from 1 to 8 words: a token mean over a step then differs
    from a mean of per-pair token means."""
    rows = [{"prompt_id": f"p{i}", "prompt": CHAT, "chosen": [{"role": "assistant", "content": "calm " * (1 + i)}],
             "rejected": [{"role": "assistant", "content": "LOUD " * (1 + (5 * i) % 8)}], "score_chosen": 1.0,
             "score_rejected": 0.0} for i in range(8)]
    return write_jsonl(path, rows)


class Crash(Exception):
    """What ``crash_after`` raises: a training run stopped as a crash would stop it."""


def crash_after(step: int):
    """A trainer's ``on_step`` callback that crashes the run once ``step`` is done (its checkpoint written)."""
    def on_step(done: int, total: int, metrics: dict) -> None:
        if done == step:
            raise Crash(f"after step {done}")

    return on_step


def kill_9(pid: int, frozen: Callable[[], object] = lambda: None):
    """Freeze a process and every process under it (a stage child in a session of its own is still
    under it), call ``frozen`` to read what they left, then SIGKILL them all: a crashed machine, where
    nothing gets to clean up. Returns what ``frozen`` read."""
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGSTOP)
    seen = frozen()
    for p in family:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    return seen


def stored_items(cache: Path) -> int:
    """Items a feedback stage's item cache holds, read while the stage may be creating it: none until
    its table exists."""
    if not Path(cache).exists():
        return 0
    with sqlite3.connect(cache) as db:
        if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'items'").fetchone()[0] == 0:
            return 0
        return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]


def read_metrics(out: Path) -> list[dict]:
    """A trainer's metrics.jsonl, one dict per optimizer step."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def make_tiny_model(dest: Path, seed: int = 0) -> Path:
    tokenizer = load_tokenizer(str(ensure_embedded_default()))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return Path(dest)


def make_tiny_reward_model(dest: Path, seed: int = 0) -> Path:
    """The same tiny body with a one-logit score head: a sequence-classification reward model."""
    tokenizer = load_tokenizer(str(ensure_embedded_default()))
    torch.manual_seed(seed)
    config = _config(tokenizer)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return Path(dest)


def make_tiny_base_model(dest: Path, seed: int = 0) -> Path:
    """A base model: a 300-token byte-level BPE tokenizer with only <s> and </s> as special tokens
    and no chat template, and untied input and output embeddings (both must grow with new tokens)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, vocab_size=300,
                            special_tokens=["<s>", "</s>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = _config(tokenizer)
    config.tie_word_embeddings = False
    LlamaForCausalLM(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return Path(dest)


def _config(tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
