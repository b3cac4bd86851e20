"""The GPU path end to end on the embedded SmolLM2-135M-Instruct, one part per process (run by
scripts/gpu_check.sh, which says how): each part writes its tokens/s and peak memory to
``WORK/results/PART.json``, and ``summary`` prints them as one table.

    data      the model made ready (the embedded one converted once, or random weights built, below),
              held-out prompts and preference pairs written
    sft       SFT on the pairs' chosen answers, bf16 autocast
    dpo       DPO from the SFT model, bf16 autocast
    evaluate  the evaluate stage on the base, SFT and DPO models (transformers engine), with
              held-out pairs: greedy answers, perplexity, preference accuracy
    vllm      vLLM's offline engine straight on the model folder: greedy, 32 prompts, 64 tokens each
    fsdp      one FSDP2 process (run under torchrun): the trainer with sharding="fsdp" when the
              training config has that field, else fully_shard on the loaded model and AdamW steps

A fresh process per part gives each its own peak-memory counter and its own CUDA context, and
lets vLLM start with the GPU to itself. GPU_CHECK_DEVICE=cpu runs every part on the CPU with small
settings (gpu_check.sh hides the GPUs), to check this script's logic on a machine without one.

GPU_CHECK_MODEL=FOLDER runs every part on that transformers folder instead. A folder without weights
(config and tokenizer files alone: a few MB that travel where 500 MB of weights cannot, to a machine
that cannot download) stands for its architecture with random weights, which the data part builds
(torch seed 0) into WORK/random-model: the steps' speed and memory are those of the real model, but
losses, perplexities and accuracies mean nothing, and the table says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch


@dataclasses.dataclass(frozen=True)
class Settings:
    pairs: int  # synthetic preference pairs; SFT trains on their chosen answers
    train_steps: int  # optimizer steps of SFT, DPO and FSDP; tokens/s is over all but the first (warm-up)
    batch_size: int  # examples (SFT, FSDP) or pairs (DPO) per step
    max_length: int  # prompt + answer tokens
    eval_prompts: int  # held-out prompts each evaluated model answers
    eval_new_tokens: int  # longest evaluation answer
    vllm_prompts: int
    vllm_new_tokens: int  # every vLLM answer runs to this length (ignore_eos): the same work every run


GPU = Settings(pairs=512, train_steps=30, batch_size=16, max_length=512, eval_prompts=32, eval_new_tokens=128,
               vllm_prompts=32, vllm_new_tokens=64)
CPU = Settings(pairs=8, train_steps=2, batch_size=2, max_length=96, eval_prompts=2, eval_new_tokens=8,
               vllm_prompts=4, vllm_new_tokens=8)
PARTS = ("data", "sft", "dpo", "evaluate", "vllm", "fsdp")
TOPICS = ["rivers", "bicycles", "libraries", "volcanoes", "pianos", "caves", "sailing", "bread", "owls", "bridges",
          "glaciers", "chess", "tea", "lighthouses", "deserts", "clocks", "bees", "maps", "coral reefs", "trains",
          "kites", "mushrooms", "telescopes", "canals", "wool", "comets", "gardens", "violins", "salt", "tunnels",
          "puffins", "paper", "windmills", "rain"]
INSTRUCTIONS = [("Answer in lowercase letters only.", {"kind": "lowercase", "args": {}}),
                ("Do not use any commas.", {"kind": "no_commas", "args": {}})]
MODEL_ENV = "GPU_CHECK_MODEL"
RANDOM_MODEL = "random-model"  # under WORK: the weights the data part builds for a GPU_CHECK_MODEL without any


def model_ref(work: Path) -> str:
    """The model every part starts from: the embedded default, else the GPU_CHECK_MODEL folder, or
    the random-weight model built from it when it has no weights."""
    from dpo_core.common.models import EMBEDDED_DEFAULT

    folder = os.environ.get(MODEL_ENV)
    if not folder:
        return EMBEDDED_DEFAULT
    return str(work / RANDOM_MODEL) if random_weights() else folder


def random_weights() -> bool:
    """A GPU_CHECK_MODEL folder without weights, which stands for its architecture."""
    folder = os.environ.get(MODEL_ENV)
    return bool(folder) and not any(Path(folder).glob("*.safetensors"))


def build_random_model(folder: str, dest: Path) -> Path:
    """The architecture of ``folder``'s config with seed-0 random weights, saved as safetensors with
    the folder's tokenizer and generation config, so every part loads it as it would a real model."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from dpo_core.common.models import load_tokenizer, save_model_folder

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    if (Path(folder) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return save_model_folder(model, load_tokenizer(folder), dest)


def settings() -> Settings:
    return GPU if torch.cuda.is_available() else CPU


def precision() -> str:
    """bf16 on the GPU, asked for outright (a GPU without it fails here, not silently in fp32); fp32
    on the CPU, where bf16 matmuls are slow without AVX512_BF16."""
    return "bf16" if torch.cuda.is_available() else "fp32"


def peak_memory() -> tuple[float, str]:
    """GiB: the CUDA caching allocator's peak when on a GPU, else the process's peak resident size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "cuda max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host max RSS"  # ru_maxrss is KiB


def record(work: Path, part: str, tokens: int | None, seconds: float, note: str = "") -> None:
    gib, source = peak_memory()
    row = {"part": part, "status": "ok", "device": "cuda" if torch.cuda.is_available() else "cpu",
           "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds if tokens and seconds else None,
           "peak_gib": gib, "memory": source, "note": note}
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "results" / f"{part}.json").write_text(json.dumps(row, indent=2))
    print(f"{part}: {json.dumps(row)}", flush=True)


class StepTimer:
    """Tokens per second over the training steps after the first, which pays for warm-up (kernel
    selection, the allocator's first blocks, the reference pass in DPO runs before it)."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens: list[float] = []

    def on_step(self, step: int, total: int, metrics: dict) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(metrics.get("num_tokens", 0.0))

    def throughput(self) -> tuple[int, float]:
        if len(self.times) < 2:
            raise RuntimeError(f"{len(self.times)} training steps ran: tokens/s needs at least 2")
        return int(sum(self.tokens[1:])), self.times[-1] - self.times[0]


# --- the parts -------------------------------------------------------------------------------


def part_data(work: Path, s: Settings) -> None:
    from dpo_core.common.io import write_jsonl
    from dpo_core.common.models import resolve_model
    from dpo_core.common.records import PromptRecord

    started = time.perf_counter()
    if random_weights():
        path = str(build_random_model(os.environ[MODEL_ENV], work / RANDOM_MODEL))
    else:
        path = resolve_model(model_ref(work))  # the embedded default: converts the shipped GGUF on first use
    asks = [(topic, text, check) for text, check in INSTRUCTIONS for topic in TOPICS]  # 68 held-out prompts
    prompts = [PromptRecord(f"e-{i:03d}", [{"role": "user", "content": f"Tell me about {topic}. {text}"}], [check])
               for i, (topic, text, check) in enumerate(asks)]
    write_jsonl(work / "eval.jsonl", (p.to_dict() for p in prompts))
    write_jsonl(work / "pairs.jsonl", (_pair(i) for i in range(s.pairs)))
    write_jsonl(work / "heldout_pairs.jsonl", (_pair(i, held_out=True) for i in range(8)))
    note = f"random weights, {os.environ[MODEL_ENV]}'s architecture: " if random_weights() else ""
    record(work, "data", None, time.perf_counter() - started, f"{note}model {path}")


def _pair(i: int, held_out: bool = False) -> dict:
    """A lowercase, calm answer chosen over a shouted, short one; some 60-100 tokens a pair."""
    topic = TOPICS[i % len(TOPICS)]
    calm = (f"{topic} are worth a closer look. people have studied {topic} for a long time and each visit "
            f"shows something new: how they change with the seasons, what they need and why they matter {i}.")
    return {"prompt_id": f"{'h' if held_out else 'p'}-{i}",
            "prompt": [{"role": "user", "content": f"Tell me about {topic}. Answer in lowercase letters only."}],
            "chosen": [{"role": "assistant", "content": calm}],
            "rejected": [{"role": "assistant", "content": f"{topic.upper()} ARE FINE. NOTHING MORE TO SAY {i}!"}],
            "score_chosen": 1.0, "score_rejected": 0.0}


def part_sft(work: Path, s: Settings) -> None:
    from dpo_core.train.config import SFTConfig
    from dpo_core.train.sft import train_sft

    timer = StepTimer()
    cfg = SFTConfig(precision=precision(), max_steps=s.train_steps, batch_size=s.batch_size, max_length=s.max_length)
    train_sft(cfg, model_ref(work), work / "sft", pairs_paths=[work / "pairs.jsonl"], on_step=timer.on_step)
    record(work, "sft", *timer.throughput(), f"LoRA, {precision()}, {s.train_steps} steps of {s.batch_size}")


def part_dpo(work: Path, s: Settings) -> None:
    from dpo_core.train.config import DPOConfig
    from dpo_core.train.dpo.trainer import train_dpo

    timer = StepTimer()
    cfg = DPOConfig(precision=precision(), max_steps=s.train_steps, batch_size=s.batch_size, max_length=s.max_length)
    train_dpo(cfg, _trained_or_base(work, "sft"), [work / "pairs.jsonl"], work / "dpo", on_step=timer.on_step)
    record(work, "dpo", *timer.throughput(), f"LoRA, {precision()}, {s.train_steps} steps of {s.batch_size} pairs")


def _trained_or_base(work: Path, stage: str) -> str:
    """The model ``stage`` saved, or the starting model when that part failed (the next still runs)."""
    saved = work / stage / "model"
    return str(saved) if (saved / "config.json").exists() else model_ref(work)


def part_evaluate(work: Path, s: Settings) -> None:
    from dpo_core.common.io import read_jsonl
    from dpo_core.common.models import load_tokenizer, resolve_model
    from dpo_core.evaluate.config import EvalConfig
    from dpo_core.evaluate.stage import evaluate

    models = {"base": model_ref(work), "sft": _trained_or_base(work, "sft"), "dpo": _trained_or_base(work, "dpo")}
    cfg = EvalConfig(max_prompts=s.eval_prompts, max_new_tokens=s.eval_new_tokens, batch_size=16)
    started = time.perf_counter()
    result = evaluate(cfg, models, work / "eval.jsonl", work / "evaluate", work / "heldout_pairs.jsonl")
    seconds = time.perf_counter() - started
    tokenizer = load_tokenizer(resolve_model(model_ref(work)))
    tokens = sum(len(tokenizer(row["response"], add_special_tokens=False)["input_ids"])
                 for row in read_jsonl(result.samples_path))
    dpo = result.scores["dpo"]
    perplexity, accuracy = dpo.get("perplexity", float("nan")), dpo.get("preference_accuracy", float("nan"))
    record(work, "evaluate", tokens, seconds, f"answer tokens / stage time, 3 models; dpo perplexity "
           f"{perplexity:.2f}, preference accuracy {accuracy:.2f}")


def part_vllm(work: Path, s: Settings) -> None:
    from vllm import LLM, SamplingParams

    from dpo_core.common.chat import render_prompt
    from dpo_core.common.io import read_jsonl
    from dpo_core.common.models import load_tokenizer, resolve_model

    gpu = torch.cuda.is_available()
    path = resolve_model(model_ref(work))
    tokenizer = load_tokenizer(path)
    chats = [row["messages"] for row in read_jsonl(work / "eval.jsonl")][: s.vllm_prompts]
    prompts = [{"prompt_token_ids": tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"]}
               for c in chats]
    started = time.perf_counter()
    if gpu:  # CUDA graphs and compilation, as served; a 2 GiB KV cache keeps the peak about the model
        llm = LLM(model=path, dtype="bfloat16", seed=0, kv_cache_memory_bytes=2 * 2**30)
    else:  # vLLM's CPU backend: KV cache from VLLM_CPU_KVCACHE_SPACE (gpu_check.sh sets it), eager
        llm = LLM(model=path, dtype="float32", seed=0, gpu_memory_utilization=0.1, enforce_eager=True)
    startup = time.perf_counter() - started
    params = SamplingParams(temperature=0.0, max_tokens=s.vllm_new_tokens, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    record(work, "vllm", tokens, seconds, f"greedy, {len(prompts)} prompts x {s.vllm_new_tokens} tokens; "
           f"engine start {startup:.0f} s; {'bfloat16' if gpu else 'float32'}")


def part_fsdp(work: Path, s: Settings) -> None:
    """Under torchrun: the trainer with sharding="fsdp" when the training config has that field and
    there are 2 or more processes to shard over (it refuses fewer), else a raw FSDP2 step."""
    from dpo_core.train.config import SFTConfig

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if "sharding" in {f.name for f in dataclasses.fields(SFTConfig)} and processes >= 2:
        _fsdp_with_trainer(work, s, processes)
    else:
        _fsdp_raw(work, s)


def _fsdp_with_trainer(work: Path, s: Settings, processes: int) -> None:
    from dpo_core.train.config import SFTConfig
    from dpo_core.train.sft import train_sft

    timer = StepTimer()  # hears of steps on the main process only, with every process's tokens summed
    cfg = SFTConfig(sharding="fsdp", num_processes=processes, lora=False, precision=precision(),
                    max_steps=s.train_steps, batch_size=s.batch_size, max_length=s.max_length)
    train_sft(cfg, model_ref(work), work / "fsdp", pairs_paths=[work / "pairs.jsonl"], on_step=timer.on_step)
    if _is_main():
        record(work, "fsdp", *timer.throughput(), f"trainer, sharding=fsdp over {processes} processes, full "
               f"fine-tune, {precision()}; peak memory of rank 0")


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _fsdp_raw(work: Path, s: Settings) -> None:
    """fully_shard on every decoder layer, then the root (which holds the tied embedding), in a
    process group of one; bf16 compute with fp32 gradient reduction on the GPU (MixedPrecisionPolicy)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from dpo_core.common.chat import encode
    from dpo_core.common.io import read_jsonl
    from dpo_core.common.models import compute_device, load_model, load_tokenizer, resolve_model

    gpu = torch.cuda.is_available()
    device = compute_device()
    if gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if gpu else "gloo")  # torchrun's env: RANK, WORLD_SIZE, MASTER_ADDR
    try:
        path = resolve_model(model_ref(work))
        tokenizer, model = load_tokenizer(path), load_model(path)  # fp32 master weights, placed on `device`
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if gpu \
            else MixedPrecisionPolicy()
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        examples = [encode(tokenizer, row["prompt"], [row["chosen"][0]["content"]], s.max_length)
                    for row in read_jsonl(work / "pairs.jsonl")]  # SFT on the chosen answers, as the sft part
        times, tokens = [], []
        for step in range(s.train_steps):
            batch = [examples[(step * s.batch_size + j) % len(examples)] for j in range(s.batch_size)]
            input_ids, labels, mask = _pad(batch, tokenizer.pad_token_id)
            loss = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # waits for the step, so the clock reads whole steps
            times.append(time.perf_counter())
            tokens.append(int(mask.sum()))
        if _is_main():
            processes = dist.get_world_size()
            record(work, "fsdp", sum(tokens[1:]) * processes, times[-1] - times[0],
                   f"raw fully_shard, {processes} process(es), full fine-tune, {'bf16' if gpu else 'fp32'} compute, "
                   f"loss {loss.item():.3f}")
    finally:
        dist.destroy_process_group()


def _pad(batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L) input ids, labels (-100 on the prompt and on padding) and attention mask of
    ``encode``'s (prompt_ids, [answer_ids]) examples, right-padded."""
    width = max(len(prompt) + len(answer) for prompt, (answer,) in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (prompt, (answer,)) in enumerate(batch):
        n = len(prompt) + len(answer)
        input_ids[row, :n] = torch.tensor(prompt + answer)
        labels[row, len(prompt) : n] = torch.tensor(answer)
        mask[row, :n] = 1
    return input_ids, labels, mask


# --- the table -------------------------------------------------------------------------------


def summary(work: Path) -> int:
    """Print every part's row; return how many failed or never reported."""
    rows = []
    for part in PARTS:
        result = work / "results" / f"{part}.json"
        failure = work / "results" / f"{part}.failed"
        if result.exists():
            rows.append(json.loads(result.read_text()))
        else:
            why = failure.read_text().strip() if failure.exists() else "did not run"
            rows.append({"part": part, "status": "FAILED" if failure.exists() else "skipped", "note": why})
    head = ["part", "status", "device", "tokens", "seconds", "tokens/s", "peak GiB", "memory", "note"]
    cells = [[r["part"], r["status"], r.get("device", "-"), _fmt(r.get("tokens"), "{:d}"),
              _fmt(r.get("seconds"), "{:.1f}"), _fmt(r.get("tokens_per_s"), "{:,.0f}"),
              _fmt(r.get("peak_gib"), "{:.2f}"), r.get("memory", "-"), r.get("note", "")] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *cells, strict=True)]
    for line in [head, ["-" * w for w in widths], *cells]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    if random_weights():
        print(f"\nrandom weights ({work / RANDOM_MODEL}): tokens/s and memory are the architecture's; losses, "
              "perplexity and accuracies mean nothing")
    return sum(r["status"] == "FAILED" for r in rows)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=[*PARTS, "summary"])
    parser.add_argument("--work", type=Path, required=True, help="where data, outputs and results/ go")
    args = parser.parse_args(argv)
    if args.part == "summary":
        return 1 if summary(args.work) else 0
    try:
        globals()[f"part_{args.part}"](args.work, settings())
    except Exception as exc:  # one line for the table; the traceback goes to the part's log
        if _is_main():
            (args.work / "results").mkdir(parents=True, exist_ok=True)
            (args.work / "results" / f"{args.part}.failed").write_text(
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}")
        raise
    return 0


if __name__ == "__main__":  # vLLM's engine starts worker processes that import this module
    sys.exit(main())
