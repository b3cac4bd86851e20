"""Stage 5, evaluate: every model answers the held-out prompts; every configured benchmark runs.

Always: the four verifiable-instruction accuracies on the held-out prompts (prompt- and
instruction-level, strict and loose, computed as IFEval defines them but with this project's own
checkers and prompts, so not IFEval scores) and a head-to-head table. With held-out preference
pairs: perplexity of each model on the chosen answers, and the DPO model's implicit-reward
preference accuracy against the SFT reference. With a judge: MT-Bench-style grading of a question
file, and pairwise win rates (both orders, length-controlled) against a baseline model. With
lm-evaluation-harness installed: its tasks.
"""

from __future__ import annotations

import gc
import json
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.common.records import EvalSample, PreferencePair, PromptRecord
from dpo_core.data.instructions import check_instructions
from dpo_core.evaluate.benchmarks import lm_eval, mt_bench, pairwise
from dpo_core.evaluate.benchmarks.preference import perplexity, preference_accuracy, summed_logps
from dpo_core.evaluate.config import EvalConfig
from dpo_core.inference.backends import LocalChat, make_backend
from dpo_core.inference.config import SamplingConfig
from dpo_core.inference.generation import generate


@dataclass
class EvalResult:
    samples_path: str
    summary_path: str
    scores: dict  # model label -> {metric: value}
    head_to_head: list[dict]  # one row per (model, baseline) with wins, ties, losses, win_rate
    judge_outputs_path: str | None = None  # MT-Bench grades and pairwise verdicts with the judge's text


def evaluate(cfg: EvalConfig, models: dict[str, str], eval_path: Path, out_dir: Path,
             heldout_pairs_path: Path | None = None, dpo_beta: float = 0.1) -> EvalResult:
    """``models`` maps a label ("base", "sft", "dpo", "champion") to a model reference."""
    out_dir = Path(out_dir)
    prompts = [p for p in (PromptRecord(**r) for r in read_jsonl(eval_path)) if p.instructions][: cfg.max_prompts]
    pairs = [PreferencePair(**r) for r in read_jsonl(heldout_pairs_path)] if heldout_pairs_path else []
    questions = mt_bench.load_questions(Path(cfg.mt_bench_path)) if cfg.mt_bench_path else []
    greedy = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    samples, scores, mt_answers, pair_logps = {}, {}, {}, {}
    for label, ref in models.items():
        path = resolve_model(ref)
        model, tokenizer = load_model(path), load_tokenizer(path)
        answers = generate(model, tokenizer, [p.messages for p in prompts], greedy)
        samples[label] = [
            EvalSample(label, p.id, p.text, a[0].text, check_instructions(a[0].text, p.instructions),
                       check_instructions(a[0].text, p.instructions, loose=True))
            for p, a in zip(prompts, answers, strict=True)
        ]
        scores[label] = accuracy(samples[label])
        if pairs:
            pair_logps[label] = summed_logps(model, tokenizer, pairs, 512, cfg.batch_size)
            scores[label]["perplexity"] = perplexity(*pair_logps[label])
        if questions:
            mt_answers[label] = mt_bench.answer(LocalChat(model, tokenizer, label, cfg.batch_size), questions,
                                               cfg.judge_max_new_tokens)
        if cfg.lm_eval_tasks:
            scores[label] |= lm_eval.run(model, tokenizer, cfg.lm_eval_tasks, cfg.lm_eval_limit)
        del model
        gc.collect()
    if "dpo" in pair_logps and "sft" in pair_logps:
        scores["dpo"] |= preference_accuracy(pair_logps["dpo"][0], pair_logps["sft"][0], dpo_beta)

    judge_rows = _judge(cfg, samples, questions, mt_answers, scores) if cfg.judge else []
    labels = list(models)
    table = [head_to_head(samples[b], samples[a], b, a) for a, b in combinations(labels, 2)]
    samples_path = write_jsonl(out_dir / "samples.jsonl", (s.to_dict() for ss in samples.values() for s in ss))
    judge_path = write_jsonl(out_dir / "judge_outputs.jsonl", judge_rows) if judge_rows else None
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps({"config": asdict(cfg), "models": models, "scores": scores,
                                        "head_to_head": table}, indent=2))
    return EvalResult(str(samples_path), str(summary_path), scores, table, str(judge_path) if judge_path else None)


def _judge(cfg: EvalConfig, samples, questions, mt_answers, scores) -> list[dict]:
    """MT-Bench grades and pairwise verdicts; adds their summaries to ``scores``."""
    judge = make_backend(cfg.judge)
    rows = []
    for label, answers in mt_answers.items():
        grades = mt_bench.grade(judge, label, questions, answers, cfg.judge_max_retries, cfg.judge_max_new_tokens)
        scores[label] |= mt_bench.summarize(grades)
        rows += [asdict(g) | {"kind": "mt_bench", "prompt_version": mt_bench.PROMPT_VERSION} for g in grades]
    baseline = cfg.pairwise_baseline
    if "dpo" in samples and baseline in samples and baseline != "dpo":
        items = [(m.prompt_id, m.prompt, m.response, b.response) for m, b in zip(samples["dpo"], samples[baseline], strict=True)]
        comparisons = pairwise.compare(judge, items, cfg.judge_max_retries, cfg.judge_max_new_tokens)
        scores["dpo"] |= {f"{k}_vs_{baseline}": v for k, v in pairwise.summarize(comparisons).items()}
        rows += [asdict(c) | {"kind": "pairwise", "baseline": baseline, "prompt_version": pairwise.PROMPT_VERSION}
                 for c in comparisons]
    return rows


def accuracy(samples: list[EvalSample]) -> dict[str, float]:
    """Prompt-level (every instruction followed) and instruction-level accuracies, strict and loose,
    as IFEval defines them, on this project's own checkers (``verifiable/`` names them so)."""
    n_prompts = len(samples)
    n_instr = sum(len(s.passed_strict) for s in samples)
    return {
        "verifiable/prompt_strict": sum(all(s.passed_strict) for s in samples) / n_prompts,
        "verifiable/instruction_strict": sum(sum(s.passed_strict) for s in samples) / n_instr,
        "verifiable/prompt_loose": sum(all(s.passed_loose) for s in samples) / n_prompts,
        "verifiable/instruction_loose": sum(sum(s.passed_loose) for s in samples) / n_instr,
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
