"""Per-prompt scores of the held-out answers from an LLM judge or a reward model: how prompts
without verifiable instructions (a team's own "Explain TCP slow start") get a number per answer.

Both functions take every model's answers (label -> one answer per prompt) and the baselines the
DPO model is compared with, and return the model-level metrics and the per-prompt scores by
model, named as in dpo_core.evaluate.metrics: each metric is the mean of the per-prompt scores
of the same name over the prompts that have one.
"""

from __future__ import annotations

from dataclasses import asdict

from dpo_core.common.records import PromptRecord
from dpo_core.evaluate.benchmarks import mt_bench, pairwise
from dpo_core.evaluate.benchmarks.stats import win_rate
from dpo_core.evaluate.metrics import JUDGE_RATING, PAIRWISE_WIN, REWARD, REWARD_WIN, versus
from dpo_core.judges.rubric import instruction_text

Answers = dict[str, list[str]]  # model label -> its answer to each prompt
PerPrompt = dict[str, list[dict]]  # model label -> each prompt's {metric: score or None}


def judge_scores(judge, prompts: list[PromptRecord], answers: Answers, baselines: list[str], max_retries: int,
                 max_new_tokens: int) -> tuple[dict, PerPrompt, list[dict]]:
    """MT-Bench single grading (1-10, parse failures counted) of every model's answers, and the DPO
    model's pairwise outcome against each baseline, asked in both orders (win rate and its
    length-controlled twin). Also returns one row per judgement with the judge's text, for audit."""
    questions = [mt_bench.Question(p.id, "held-out", [instruction_text(p)]) for p in prompts]
    metrics, per_prompt, rows = {}, {}, []
    for label, texts in answers.items():
        grades = mt_bench.grade(judge, label, questions, [[t] for t in texts], max_retries, max_new_tokens)
        metrics[label] = {f"judge/{k}": v for k, v in mt_bench.summarize(grades).items()}
        per_prompt[label] = [{JUDGE_RATING: g.rating} for g in grades]
        rows += [asdict(g) | {"kind": "rating", "prompt_version": mt_bench.PROMPT_VERSION} for g in grades]
    for baseline in baselines:
        items = [(p.id, instruction_text(p), m, b) for p, m, b in zip(prompts, answers["dpo"], answers[baseline], strict=True)]
        comparisons = pairwise.compare(judge, items, max_retries, max_new_tokens)
        metrics["dpo"] |= {versus(f"pairwise/{k}", baseline): v for k, v in pairwise.summarize(comparisons).items()}
        for scores, c in zip(per_prompt["dpo"], comparisons, strict=True):
            scores[versus(PAIRWISE_WIN, baseline)] = c.outcome
        rows += [asdict(c) | {"kind": "pairwise", "baseline": baseline, "prompt_version": pairwise.PROMPT_VERSION}
                 for c in comparisons]
    return metrics, per_prompt, rows


def reward_scores(reward_model, prompts: list[PromptRecord], answers: Answers,
                  baselines: list[str]) -> tuple[dict, PerPrompt]:
    """Each answer's reward (``reward_model.rewards``, dpo_core.judges.reward_model), and per prompt
    whether the DPO model's answer gets a higher reward than each baseline's: 1, 0.5 on a tie, 0.
    Every distinct (prompt, answer) is scored once, so two models giving the same answer tie exactly
    rather than by batching noise."""
    distinct = list(dict.fromkeys((i, t) for texts in answers.values() for i, t in enumerate(texts)))
    chats = [prompts[i].messages + [{"role": "assistant", "content": t}] for i, t in distinct]
    reward = dict(zip(distinct, reward_model.rewards(chats), strict=True))
    per_prompt = {label: [{REWARD: reward[i, t]} for i, t in enumerate(texts)] for label, texts in answers.items()}
    metrics = {label: {REWARD: sum(s[REWARD] for s in scores) / len(scores)} for label, scores in per_prompt.items()}
    for baseline in baselines:
        outcomes = [_outcome(reward[i, m], reward[i, b]) for i, (m, b) in enumerate(zip(answers["dpo"], answers[baseline],
                                                                                         strict=True))]
        metrics["dpo"][versus(REWARD_WIN, baseline)] = win_rate(outcomes)
        for scores, o in zip(per_prompt["dpo"], outcomes, strict=True):
            scores[versus(REWARD_WIN, baseline)] = o
    return metrics, per_prompt


def _outcome(model: float, baseline: float) -> float:
    return 1.0 if model > baseline else 0.5 if model == baseline else 0.0
