"""Answer generation, greedy, on the same model and prompts, side by side in one run: plain
one-prompt-at-a-time ``model.generate``, the local backend (dpo_core.inference.generation:
length-sorted, left-padded batches) and vLLM's engine (dpo_core.inference.vllm_engine) in each
``--vllm-dtypes``.

    python bench/generation.py --model embedded:smollm2-135m-instruct --prompts 32 --max-new-tokens 64

Prints one JSON line: generated tokens/s of each, its ratio to the local backend's, vLLM's
engine start-up time (reported apart, not in its tokens/s), and how many greedy answers are
identical to the local backend's (another summation order can flip a near-tie between two tokens;
the count says how often that happened).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dpo_core.common.io import read_jsonl
from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.data.instructions import INSTRUCTION_SET_PATH
from dpo_core.inference.config import EngineConfig, SamplingConfig
from dpo_core.inference.generation import eos_ids, generate, length_to_eos
from dpo_core.inference.vllm_engine import release_engine, vllm_engine


@torch.inference_mode()
def one_at_a_time(model, tokenizer, chats, max_new_tokens) -> list[tuple[str, int]]:
    """The baseline: ``model.generate`` on each prompt alone, no padding."""
    eos = eos_ids(model.generation_config, tokenizer)
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
    parser.add_argument("--vllm-dtypes", default="float32,bfloat16", help="comma-separated; empty: no vLLM column")
    args = parser.parse_args()

    path = resolve_model(args.model)
    model, tokenizer = load_model(path, inference=True).eval(), load_tokenizer(path)
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
    local_rate = ours_tokens / ours_s
    result = {
        "model": args.model, "prompts": len(chats), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "local": {"tokens": ours_tokens, "seconds": ours_s, "tokens_per_s": local_rate},
        "one_at_a_time": {"tokens": plain_tokens, "seconds": plain_s, "tokens_per_s": plain_tokens / plain_s,
                          "vs_local": (plain_tokens / plain_s) / local_rate,
                          "identical_to_local": sum(g.text == text for g, (text, _) in zip(ours, plain, strict=True))},
    }
    for dtype in filter(None, args.vllm_dtypes.split(",")):
        result[f"vllm_{dtype}"] = vllm_column(path, chats, args.max_new_tokens, dtype, ours, local_rate)
    print(json.dumps(result))


def vllm_column(path, chats, max_new_tokens, dtype, local, local_rate) -> dict:
    started = time.perf_counter()
    engine = vllm_engine(path, EngineConfig(name="vllm", dtype=dtype))
    startup_s = time.perf_counter() - started
    answers = {}

    def keep(i, generations):
        answers[i] = generations[0]

    engine.generate(chats[:2], num_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0, on_prompt=keep)
    start = time.perf_counter()
    engine.generate(chats, num_samples=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=0,
                    on_prompt=keep)
    seconds = time.perf_counter() - start
    release_engine()
    tokens = sum(g.n_tokens for g in answers.values())
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "startup_s": startup_s,
            "vs_local": tokens / seconds / local_rate,
            "identical_to_local": sum(answers[i].text == g.text for i, g in enumerate(local))}


if __name__ == "__main__":
    main()
