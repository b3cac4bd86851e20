"""Candidate generation: the local backend (dpo_core.inference.generation: length-sorted, left-padded
batches) against plain one-prompt-at-a-time ``generate`` on the same model and prompts, greedy.

    python bench/generation.py --model embedded:smollm2-135m-instruct --prompts 32 --max-new-tokens 64

Prints one JSON line: generated tokens/s on each side, the ratio, and how many of the greedy
answers are identical on both sides (batching changes the floating-point summation order, which
can flip a near-tie between two tokens; the count says how often that happened).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dpo_core.common.io import read_jsonl
from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.data.instructions import INSTRUCTION_SET_PATH
from dpo_core.inference.config import SamplingConfig
from dpo_core.inference.generation import eos_ids, generate, length_to_eos


@torch.inference_mode()
def one_at_a_time(model, tokenizer, chats, max_new_tokens) -> list[tuple[str, int]]:
    """The baseline: ``model.generate`` on each prompt alone, no padding."""
    eos = eos_ids(model, tokenizer)
    out = []
    for chat in chats:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        tokens = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                pad_token_id=tokenizer.pad_token_id)[0, ids["input_ids"].shape[1]:]
        n = length_to_eos(tokens, eos)
        out.append((tokenizer.decode(tokens[:n], skip_special_tokens=True).strip(), n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    path = resolve_model(args.model)
    model, tokenizer = load_model(path).eval(), load_tokenizer(path)
    chats = [[{"role": "user", "content": r["prompt"]}] for r in read_jsonl(INSTRUCTION_SET_PATH)][: args.prompts]
    cfg = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    one_at_a_time(model, tokenizer, chats[:1], 4)  # warm-up, untimed
    generate(model, tokenizer, chats[:2], SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=4))

    start = time.perf_counter()
    plain = one_at_a_time(model, tokenizer, chats, args.max_new_tokens)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = [g[0] for g in generate(model, tokenizer, chats, cfg)]
    ours_s = time.perf_counter() - start

    plain_tokens, ours_tokens = sum(n for _, n in plain), sum(g.n_tokens for g in ours)
    print(json.dumps({
        "model": args.model, "prompts": len(chats), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "ours": {"tokens": ours_tokens, "seconds": ours_s, "tokens_per_s": ours_tokens / ours_s},
        "one_at_a_time": {"tokens": plain_tokens, "seconds": plain_s, "tokens_per_s": plain_tokens / plain_s},
        "speedup_tokens_per_s": (ours_tokens / ours_s) / (plain_tokens / plain_s),
        "identical_outputs": sum(g.text == text for g, (text, _) in zip(ours, plain, strict=True)),
    }))


if __name__ == "__main__":
    main()
