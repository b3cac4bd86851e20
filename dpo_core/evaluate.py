"""Stage 5, evaluate: answer the held-out prompts with each model and check the instructions.

Reports IFEval's four accuracies (prompt- and instruction-level, strict and loose) per model and
a head-to-head table: per prompt, the model that follows more of the instructions wins.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

from dpo_core.data.io import read_jsonl, write_jsonl
from dpo_core.generation import SamplingConfig, generate
from dpo_core.instructions import check_instructions
from dpo_core.models import load_model, load_tokenizer, resolve_model
from dpo_core.records import EvalSample, PromptRecord


@dataclass
class EvalConfig:
    max_prompts: int | None = None  # evaluate on at most this many held-out prompts
    max_new_tokens: int = 160
    batch_size: int = 16  # prompts per generate call (greedy decoding)


@dataclass
class EvalResult:
    samples_path: str
    summary_path: str
    scores: dict  # model label -> {metric: value}
    head_to_head: list[dict]  # one row per (model, baseline) with wins, ties, losses, win_rate


def evaluate(cfg: EvalConfig, models: dict[str, str], eval_path: Path, out_dir: Path) -> EvalResult:
    """``models`` maps a label ("base", "sft", "dpo") to a model reference."""
    out_dir = Path(out_dir)
    prompts = [PromptRecord(**r) for r in read_jsonl(eval_path)]
    prompts = [p for p in prompts if p.instructions][: cfg.max_prompts]
    greedy = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    samples: dict[str, list[EvalSample]] = {}
    for label, ref in models.items():
        path = resolve_model(ref)
        model, tokenizer = load_model(path), load_tokenizer(path)
        answers = generate(model, tokenizer, [p.messages for p in prompts], greedy)
        samples[label] = [
            EvalSample(label, p.id, p.text, a[0].text,
                       check_instructions(a[0].text, p.instructions),
                       check_instructions(a[0].text, p.instructions, loose=True))
            for p, a in zip(prompts, answers, strict=True)
        ]
        del model
        gc.collect()
    scores = {label: accuracy(s) for label, s in samples.items()}
    labels = list(models)
    table = [head_to_head(samples[b], samples[a], b, a) for a, b in combinations(labels, 2)]
    samples_path = write_jsonl(out_dir / "samples.jsonl", (s.to_dict() for ss in samples.values() for s in ss))
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps({"config": asdict(cfg), "models": models, "scores": scores,
                                        "head_to_head": table}, indent=2))
    return EvalResult(str(samples_path), str(summary_path), scores, table)


def accuracy(samples: list[EvalSample]) -> dict[str, float]:
    """IFEval's prompt-level (all instructions followed) and instruction-level accuracies."""
    n_prompts = len(samples)
    n_instr = sum(len(s.passed_strict) for s in samples)
    return {
        "prompt_level_strict": sum(all(s.passed_strict) for s in samples) / n_prompts,
        "instruction_level_strict": sum(sum(s.passed_strict) for s in samples) / n_instr,
        "prompt_level_loose": sum(all(s.passed_loose) for s in samples) / n_prompts,
        "instruction_level_loose": sum(sum(s.passed_loose) for s in samples) / n_instr,
    }


def head_to_head(model: list[EvalSample], baseline: list[EvalSample], model_label: str, baseline_label: str) -> dict:
    """Per prompt, the answer following the larger share of instructions wins; equal shares tie."""
    wins = ties = losses = 0
    for m, b in zip(model, baseline, strict=True):
        sm, sb = sum(m.passed_strict) / len(m.passed_strict), sum(b.passed_strict) / len(b.passed_strict)
        wins += sm > sb
        losses += sm < sb
        ties += sm == sb
    n = wins + ties + losses
    return {"model": model_label, "baseline": baseline_label, "wins": wins, "ties": ties,
            "losses": losses, "win_rate": (wins + 0.5 * ties) / n}
