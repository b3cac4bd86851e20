"""Stage 5, evaluate: every model answers the held-out prompts once; every configured benchmark runs.

Held-out prompts with verifiable instructions: the four verifiable-instruction accuracies over
them (prompt- and instruction-level, strict and loose, computed as IFEval defines them but with
this project's own checkers and prompts, so not IFEval scores) and a head-to-head table. With a
judge, every prompt, with or without instructions: MT-Bench-style grading of each answer and the
DPO model's pairwise win rates (both orders, length-controlled) against its baselines, and the
grading of an MT-Bench question file. With a reward model: each answer's reward and the DPO
model's reward win rates. With held-out preference pairs: perplexity of each model on the chosen
answers, and the DPO model's implicit-reward preference accuracy against the SFT reference. With
lm-evaluation-harness installed: its tasks. Every per-prompt score is kept on the prompt's
``EvalSample``, for the gate.

With transfer prompts (instructions worded unlike the training prompts', some of kinds never
trained on): the same four accuracies over them as ``transfer/*``, so a gain that is only the
training wording learned shows as a gap between ``verifiable/*`` and ``transfer/*``; the gate reads
neither these nor the transfer samples. Against ``base``, each model's paired bootstrap interval of
the prompt_strict difference on both sets says whether a gain is more than noise.
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
from dpo_core.evaluate.answer_cache import answers_path, load_answers, save_answers
from dpo_core.evaluate.benchmarks import lm_eval, mt_bench
from dpo_core.evaluate.benchmarks.preference import perplexity, preference_accuracy, summed_logps
from dpo_core.evaluate.benchmarks.stats import paired_bootstrap
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.heldout import load_prompts
from dpo_core.evaluate.scores import judge_scores, reward_scores
from dpo_core.inference.backends import LocalChat, VLLMChat, make_backend
from dpo_core.inference.vllm_engine import release_engine
from dpo_core.judges.reward_model import RewardModelJudge


@dataclass
class EvalResult:
    samples_path: str
    summary_path: str
    scores: dict  # model label -> {metric: value}
    head_to_head: list[dict]  # one row per (model, baseline) with wins, ties, losses, win_rate
    judge_outputs_path: str | None = None  # the judge's grades and verdicts with its text
    transfer_samples_path: str | None = None  # the answers to the transfer prompts, checked


BOOTSTRAP_CONFIDENCE = 0.9  # of the interval around each model's prompt_strict gain over base


def evaluate(cfg: EvalConfig, models: dict[str, str], eval_path: Path, out_dir: Path,
             heldout_pairs_path: Path | None = None, dpo_beta: float = 0.1, *,
             transfer_path: Path | None = None) -> EvalResult:
    """``models`` maps a label ("base", "sft", "dpo", "champion") to a model reference."""
    out_dir = Path(out_dir)
    prompts = load_prompts(cfg, Path(eval_path))  # refuses a set nothing can score, before any model loads
    transfer = transfer_prompts(cfg, Path(transfer_path)) if transfer_path else []
    pairs = [PreferencePair(**r) for r in read_jsonl(heldout_pairs_path)] if heldout_pairs_path else []
    questions = mt_bench.load_questions(Path(cfg.mt_bench_path)) if cfg.mt_bench_path else []
    answers, transfer_answers, scores, mt_answers, pair_logps = {}, {}, {}, {}, {}
    for label, ref in models.items():
        path = resolve_model(ref)
        cached = answers_path(out_dir.parent, cfg, path, [p.messages for p in prompts + transfer])
        both = load_answers(cached)
        chat = _answerer(cfg, path, label) if both is None or questions else None
        if both is None:
            both = chat.complete([p.messages for p in prompts + transfer], cfg.max_new_tokens)  # one batch run
            save_answers(cached, both)
        answers[label], transfer_answers[label] = both[: len(prompts)], both[len(prompts):]
        if questions:
            mt_answers[label] = mt_bench.answer(chat, questions, cfg.judge_max_new_tokens)
        scores[label] = {}
        if pairs or cfg.lm_eval_tasks:  # transformers computes these: vLLM's engine gives its memory back first
            release_engine()
            model, tokenizer = (chat.model, chat.tokenizer) if isinstance(chat, LocalChat) else \
                (load_model(path, inference=True), load_tokenizer(path))
            if pairs:
                pair_logps[label] = summed_logps(model, tokenizer, pairs, 512, cfg.batch_size)
                scores[label]["perplexity"] = perplexity(*pair_logps[label])
            if cfg.lm_eval_tasks:
                scores[label] |= lm_eval.run(model, tokenizer, cfg.lm_eval_tasks, cfg.lm_eval_limit)
            del model
        del chat
        gc.collect()
    if "dpo" in pair_logps and "sft" in pair_logps:
        scores["dpo"] |= preference_accuracy(pair_logps["dpo"][0], pair_logps["sft"][0], dpo_beta)

    per_prompt = {label: [{} for _ in prompts] for label in models}
    baselines = [b for b in cfg.win_rate_baselines if b in models] if "dpo" in models else []
    judge_rows = []
    if cfg.judge:
        judge_rows = _judge(cfg, prompts, answers, baselines, questions, mt_answers, scores, per_prompt)
    if cfg.reward_model:
        release_engine()  # the reward model needs the memory
        metrics, rewards = reward_scores(RewardModelJudge(cfg.reward_model, cfg.batch_size), prompts, answers, baselines)
        _merge(scores, per_prompt, metrics, rewards)
    samples = {label: _checked(label, prompts, answers[label], per_prompt[label]) for label in models}
    transfer_samples = {label: _checked(label, transfer, transfer_answers[label]) for label in models}
    scores = {label: accuracy(samples[label]) | accuracy(transfer_samples[label], "transfer") | scores[label]
              for label in models}
    for label in [m for m in models if m != "base"] if "base" in models else []:
        scores[label] |= _vs_base(samples[label], samples["base"], "verifiable")
        scores[label] |= _vs_base(transfer_samples[label], transfer_samples["base"], "transfer")
    checked = any(p.instructions for p in prompts)
    table = [head_to_head(samples[b], samples[a], b, a) for a, b in combinations(models, 2)] if checked else []
    samples_path = write_jsonl(out_dir / "samples.jsonl", (s.to_dict() for ss in samples.values() for s in ss))
    judge_path = write_jsonl(out_dir / "judge_outputs.jsonl", judge_rows) if judge_rows else None
    transfer_out = str(write_jsonl(out_dir / "transfer_samples.jsonl",
                                   (s.to_dict() for ss in transfer_samples.values() for s in ss))) if transfer else None
    release_engine()
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps({"config": asdict(cfg), "models": models, "scores": scores,
                                        "head_to_head": table, "transfer_samples_path": transfer_out}, indent=2))
    return EvalResult(str(samples_path), str(summary_path), scores, table, str(judge_path) if judge_path else None,
                      transfer_out)


def transfer_prompts(cfg: EvalConfig, path: Path) -> list[PromptRecord]:
    """The transfer prompts with verifiable instructions, at most ``max_prompts``: only the checks score
    transfer, so, as ``load_prompts`` does without a judge, the others are left out, and a set with
    none is refused before any model loads."""
    prompts = [PromptRecord(**r) for r in read_jsonl(path)]
    checked = [p for p in prompts if p.instructions]
    if not checked:
        raise ValueError(f"{path}: none of the {len(prompts)} transfer prompts has verifiable instructions, and only "
                         "they score transfer; give prompts with instructions as data.transfer_source, or leave it unset")
    return checked[: cfg.max_prompts]


def _checked(label: str, prompts: list[PromptRecord], answers: list[str], scores: list[dict] | None = None) -> list[EvalSample]:
    """Each answer as an EvalSample with its strict and loose instruction checks."""
    return [EvalSample(label, p.id, p.text, a, check_instructions(a, p.instructions),
                       check_instructions(a, p.instructions, loose=True), s)
            for p, a, s in zip(prompts, answers, scores or [{} for _ in prompts], strict=True)]


def _vs_base(model: list[EvalSample], base: list[EvalSample], prefix: str) -> dict[str, float]:
    """The model's prompt_strict minus base's on the same prompts with instructions, with a paired
    bootstrap interval (BOOTSTRAP_CONFIDENCE); none without such prompts."""
    pairs = [(all(m.passed_strict), all(b.passed_strict)) for m, b in zip(model, base, strict=True) if m.passed_strict]
    if not pairs:
        return {}
    ci = paired_bootstrap(*zip(*pairs, strict=True), confidence=BOOTSTRAP_CONFIDENCE)
    name = f"{prefix}/prompt_strict_vs_base"
    return {f"{name}_ci_low": ci["ci_low"], f"{name}_ci_high": ci["ci_high"], f"{name}_diff": ci["mean_diff"]}


def _answerer(cfg: EvalConfig, path: str, label: str) -> LocalChat | VLLMChat:
    """Greedy answers from the model at ``path`` on the configured engine."""
    if cfg.engine.resolved() == "vllm":
        return VLLMChat(path, cfg.engine, label)
    return LocalChat(load_model(path, inference=True), load_tokenizer(path), label, cfg.batch_size)


def _judge(cfg: EvalConfig, prompts, answers, baselines, questions, mt_answers, scores, per_prompt) -> list[dict]:
    """The judge's grades of the held-out answers, its pairwise verdicts and its MT-Bench grades, one
    judge loaded once for all; adds their summaries to ``scores`` and ``per_prompt``."""
    if not cfg.judge.startswith("vllm:"):  # a local judge needs the memory; a vllm: one may reuse the engine
        release_engine()
    judge = make_backend(cfg.judge, engine=cfg.engine)
    metrics, ratings, rows = judge_scores(judge, prompts, answers, baselines, cfg.judge_max_retries,
                                          cfg.judge_max_new_tokens)
    _merge(scores, per_prompt, metrics, ratings)
    for label, mt in mt_answers.items():
        grades = mt_bench.grade(judge, label, questions, mt, cfg.judge_max_retries, cfg.judge_max_new_tokens)
        scores[label] |= {f"mt_bench_{k}": v for k, v in mt_bench.summarize(grades).items()}
        rows += [asdict(g) | {"kind": "mt_bench", "prompt_version": mt_bench.PROMPT_VERSION} for g in grades]
    return rows


def _merge(scores: dict, per_prompt: dict, metrics: dict, prompt_scores: dict) -> None:
    for label, m in metrics.items():
        scores[label] |= m
    for label, rows in prompt_scores.items():
        for into, more in zip(per_prompt[label], rows, strict=True):
            into |= more


def accuracy(samples: list[EvalSample], prefix: str = "verifiable") -> dict[str, float]:
    """Prompt-level (every instruction followed) and instruction-level accuracies, strict and loose,
    as IFEval defines them, on this project's own checkers (``verifiable/`` names them so; the
    transfer set's are ``transfer/``), over the prompts with instructions; none without any."""
    checked = [s for s in samples if s.passed_strict]
    if not checked:
        return {}
    n_instr = sum(len(s.passed_strict) for s in checked)
    return {
        f"{prefix}/prompt_strict": sum(all(s.passed_strict) for s in checked) / len(checked),
        f"{prefix}/instruction_strict": sum(sum(s.passed_strict) for s in checked) / n_instr,
        f"{prefix}/prompt_loose": sum(all(s.passed_loose) for s in checked) / len(checked),
        f"{prefix}/instruction_loose": sum(sum(s.passed_loose) for s in checked) / n_instr,
    }


def head_to_head(model: list[EvalSample], baseline: list[EvalSample], model_label: str, baseline_label: str) -> dict:
    """Per prompt with instructions, the answer following the larger share of them wins; equal shares tie."""
    wins = ties = losses = 0
    for m, b in zip(model, baseline, strict=True):
        if not m.passed_strict:
            continue
        sm, sb = sum(m.passed_strict) / len(m.passed_strict), sum(b.passed_strict) / len(b.passed_strict)
        wins += sm > sb
        losses += sm < sb
        ties += sm == sb
    n = wins + ties + losses
    return {"model": model_label, "baseline": baseline_label, "wins": wins, "ties": ties,
            "losses": losses, "win_rate": (wins + 0.5 * ties) / n}
