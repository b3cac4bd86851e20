"""Stage 2, collect AI feedback: sample K answers per prompt, judge them, binarize into pairs.

Binarization follows Zephyr: the highest-scored answer is chosen and a random lower-scored one
rejected; prompts whose answers all score the same carry no preference and are dropped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dpo_core.data.io import read_jsonl, write_jsonl
from dpo_core.digest import digest_files
from dpo_core.generation import SamplingConfig, generate
from dpo_core.judges import verifiable
from dpo_core.models import load_model, load_tokenizer, resolve_model
from dpo_core.records import JudgedCandidate, PreferencePair, PromptRecord


@dataclass
class FeedbackConfig:
    max_prompts: int | None = None  # use at most this many training prompts
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)


@dataclass
class FeedbackResult:
    candidates_path: str
    pairs_path: str
    digest: str  # of the pairs and candidates files
    stats: dict


def collect_feedback(
    cfg: FeedbackConfig, model_ref: str, prompts_path: Path, out_dir: Path, on_progress: Callable[[int, int], None] | None = None
) -> FeedbackResult:
    out_dir = Path(out_dir)
    prompts = [PromptRecord(**r) for r in read_jsonl(prompts_path)][: cfg.max_prompts]
    judgeable = [p for p in prompts if p.instructions]
    path = resolve_model(model_ref)
    model, tokenizer = load_model(path), load_tokenizer(path)
    generations = generate(model, tokenizer, [p.messages for p in judgeable], cfg.sampling, on_progress)

    candidates: list[JudgedCandidate] = []
    pairs: list[PreferencePair] = []
    rng = random.Random(cfg.sampling.seed)
    for prompt, gens in zip(judgeable, generations, strict=True):
        judged = []
        for i, g in enumerate(gens):
            score, passed = verifiable.judge(g.text, prompt.instructions)
            judged.append(JudgedCandidate(prompt.id, i, model_ref, g.text, g.n_tokens, score, passed))
        candidates += judged
        pair = binarize(prompt, judged, rng)
        if pair is not None:
            pairs.append(pair)

    cand_path = write_jsonl(out_dir / "candidates.jsonl", (c.to_dict() for c in candidates))
    pairs_path = write_jsonl(out_dir / "pairs.jsonl", (p.to_dict() for p in pairs))
    stats = _stats(prompts, judgeable, candidates, pairs, cfg.sampling.num_samples)
    (out_dir / "stats.json").write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=2))
    return FeedbackResult(str(cand_path), str(pairs_path), digest_files([pairs_path, cand_path]), stats)


def binarize(prompt: PromptRecord, judged: list[JudgedCandidate], rng: random.Random) -> PreferencePair | None:
    """Best vs a random lower-scored candidate (Zephyr); None when every candidate ties."""
    best_score = max(c.score for c in judged)
    best = rng.choice([c for c in judged if c.score == best_score])
    lower = [c for c in judged if c.score < best_score]
    if not lower:
        return None
    worse = rng.choice(lower)
    return PreferencePair(
        prompt_id=prompt.id,
        prompt=prompt.messages,
        chosen=[{"role": "assistant", "content": best.text}],
        rejected=[{"role": "assistant", "content": worse.text}],
        score_chosen=best.score,
        score_rejected=worse.score,
    )


def _stats(prompts, judgeable, candidates, pairs, k) -> dict:
    n = max(len(candidates), 1)
    return {
        "prompts": len(prompts),
        "prompts_without_instructions": len(prompts) - len(judgeable),
        "candidates": len(candidates),
        "pairs": len(pairs),
        "ties_dropped": len(judgeable) - len(pairs),
        "mean_candidate_score": sum(c.score for c in candidates) / n,
        "best_of_k_score": sum(
            max(c.score for c in candidates[i : i + k]) for i in range(0, len(candidates), k)
        ) / max(len(judgeable), 1),
        "mean_candidate_tokens": sum(c.n_tokens for c in candidates) / n,
        "mean_margin": sum(p.score_chosen - p.score_rejected for p in pairs) / max(len(pairs), 1),
    }
