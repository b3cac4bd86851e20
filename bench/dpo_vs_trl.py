"""This project's DPO trainer against TRL's DPOTrainer: same model, pairs, batch size, machine.

    python bench/dpo_vs_trl.py --model embedded:smollm2-135m-instruct --steps 8 --batch-size 4 [--lora]
        [--optimizer-in-backward] [--precision {fp32,bf16}]

Each side runs in its own child process (so each peak-memory figure is that side's alone) on the
same ``steps * batch_size`` pairs, one epoch, same learning rate and schedule. Prints one JSON line:
tokens/s (prompt+chosen and prompt+rejected tokens per second of training), peak resident
memory, their ratios (ours / TRL), and both per-step losses. Timed on each side: the reference
pass plus the training loop (ours: ``reference_runtime + train_runtime``; TRL: ``trainer.train()``,
which runs the reference inside its steps); model loading, tokenization and saving are not timed.
``--optimizer-in-backward`` turns on ours' in-backward AdamW, which cannot clip by the global
norm, so both sides then run without clipping (TRL: ``max_grad_norm=0``). ``--precision`` runs both
sides in it: fp32, or bf16 autocast over fp32 weights (ours: ``precision="bf16"``; TRL: ``bf16=True``),
so the ratio stays like for like on a CPU with bf16 matrix units (AVX512_BF16, AMX) too.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the river moves slowly past old stone bridges while small boats carry bread fruit and letters "
         "between quiet towns where people talk about weather music travel and the long history of the valley").split()


def make_pairs(n: int, path: Path, seed: int = 0) -> None:
    """Pairs on the shipped instruction prompts with answers of 40-120 words, the demo's lengths."""
    from dpo_core.common.io import read_jsonl, write_jsonl
    from dpo_core.data.instructions import INSTRUCTION_SET_PATH

    rng = random.Random(seed)
    prompts = [r for r in read_jsonl(INSTRUCTION_SET_PATH) if r["split"] == "train"][:n]

    def answer() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))).capitalize() + "."

    write_jsonl(path, [{"prompt_id": r["id"], "prompt": [{"role": "user", "content": r["prompt"]}],
                        "chosen": [{"role": "assistant", "content": answer()}],
                        "rejected": [{"role": "assistant", "content": answer()}],
                        "score_chosen": 1.0, "score_rejected": 0.0} for r in prompts])


def run_ours(args, pairs: Path, out: Path) -> dict:
    from dpo_core.train.config import DPOConfig
    from dpo_core.train.dpo.trainer import train_dpo

    cfg = DPOConfig(lora=args.lora, learning_rate=args.lr, batch_size=args.batch_size, max_steps=args.steps,
                    warmup_ratio=0.0, scheduler="linear", optimizer_in_backward=args.optimizer_in_backward,
                    max_grad_norm=0.0 if args.optimizer_in_backward else 1.0, precision=args.precision)
    result = train_dpo(cfg, args.model, [pairs], out)
    seconds = result.metrics["reference_runtime"] + result.metrics["train_runtime"]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": seconds, "tokens": sum(s["num_tokens"] for s in steps), "losses": [s["loss"] for s in steps]}


def run_trl(args, pairs: Path, out: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    from dpo_core.common.io import read_jsonl
    from dpo_core.common.models import load_model, load_tokenizer, resolve_model

    path = resolve_model(args.model)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in read_jsonl(pairs)]
    trl_args = TRLConfig(output_dir=str(out), learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
                         max_steps=args.steps, lr_scheduler_type="linear", warmup_steps=0, logging_steps=1,
                         report_to=[], use_cpu=True, save_strategy="no", bf16=args.precision == "bf16",
                         max_length=512, seed=0,
                         max_grad_norm=0.0 if args.optimizer_in_backward else 1.0)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM") if args.lora else None
    trainer = DPOTrainer(model=load_model(path), args=trl_args, train_dataset=Dataset.from_list(rows),
                         processing_class=load_tokenizer(path), peft_config=peft)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {"seconds": seconds, "tokens": trainer._total_train_tokens, "losses": [h["loss"] for h in logs]}


def child(side: str, args) -> None:
    """Run one side and print its result with this process's peak resident memory."""
    work = Path(args.workdir)
    result = (run_ours if side == "ours" else run_trl)(args, work / "pairs.jsonl", work / side)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("@result " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 on all linear layers (default: full fine-tune)")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--optimizer-in-backward", action="store_true",
                        help="ours: AdamW applied inside backward; both sides: no gradient clipping")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="both sides: fp32, or bf16 autocast over fp32 weights (TRL: bf16=True)")
    parser.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args.side, args)

    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as work:
        make_pairs(args.steps * args.batch_size, Path(work) / "pairs.jsonl")
        results = {}
        for side in ("ours", "trl"):
            cmd = [sys.executable, __file__, "--side", side, "--workdir", work, "--model", args.model,
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                   "--precision", args.precision]
            cmd += ["--lora"] if args.lora else []
            cmd += ["--optimizer-in-backward"] if args.optimizer_in_backward else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("@result ")), None)
            if out.returncode != 0 or line is None:
                sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
            results[side] = json.loads(line[len("@result "):])
    ours, trl = results["ours"], results["trl"]
    for r in (ours, trl):
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    print(json.dumps({
        "model": args.model, "steps": args.steps, "batch_size": args.batch_size, "lora": args.lora,
        "optimizer_in_backward": args.optimizer_in_backward, "precision": args.precision,
        "ours": {k: ours[k] for k in ("tokens_per_s", "peak_rss_gb", "tokens", "seconds")},
        "trl": {k: trl[k] for k in ("tokens_per_s", "peak_rss_gb", "tokens", "seconds")},
        "speedup_tokens_per_s": ours["tokens_per_s"] / trl["tokens_per_s"],
        "memory_ratio": ours["peak_rss_gb"] / trl["peak_rss_gb"],
        "losses": {"ours": ours["losses"], "trl": trl["losses"]},
    }))


if __name__ == "__main__":
    main()
