"""Stage 2, collect AI feedback: sample K answers per prompt, judge them, binarize into pairs.

By default binarization follows Zephyr: the highest-scored answer is chosen and a random
lower-scored one rejected; prompts whose answers all score the same carry no preference and are
dropped (see dpo_core.binarize for the other strategies).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dpo_core.binarize import STRATEGIES, binarize
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
    binarize: str = "best_vs_random"  # or "best_vs_worst", "all_pairs" (see dpo_core.binarize)
    min_margin: float = 0.0  # a pair's scores must differ by at least this much

    def __post_init__(self):
        if isinstance(self.sampling, dict):
            self.sampling = SamplingConfig(**self.sampling)
        if self.binarize not in STRATEGIES:
            raise ValueError(f"binarize must be one of {STRATEGIES}, got {self.binarize!r}")


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
        pairs += binarize(prompt, judged, cfg.binarize, rng, cfg.min_margin)

    cand_path = write_jsonl(out_dir / "candidates.jsonl", (c.to_dict() for c in candidates))
    pairs_path = write_jsonl(out_dir / "pairs.jsonl", (p.to_dict() for p in pairs))
    _write_trl_formats(pairs, out_dir)
    stats = _stats(prompts, judgeable, candidates, pairs, cfg.sampling.num_samples)
    (out_dir / "stats.json").write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=2))
    return FeedbackResult(str(cand_path), str(pairs_path), digest_files([pairs_path, cand_path]), stats)


def _write_trl_formats(pairs: list[PreferencePair], out_dir: Path) -> None:
    """The pairs as Parquet and as a saved ``datasets`` folder: TRL's DPOTrainer loads either as is."""
    import datasets

    dataset = datasets.Dataset.from_list([p.to_dict() for p in pairs]) if pairs else datasets.Dataset.from_dict(
        {k: [] for k in ("prompt_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected")})
    dataset.to_parquet(str(out_dir / "pairs.parquet"))
    dataset.save_to_disk(str(out_dir / "pairs_dataset"))


def _stats(prompts, judgeable, candidates, pairs, k) -> dict:
    n = max(len(candidates), 1)
    return {
        "prompts": len(prompts),
        "prompts_without_instructions": len(prompts) - len(judgeable),
        "candidates": len(candidates),
        "pairs": len(pairs),
        "prompts_with_pairs": len({p.prompt_id for p in pairs}),
        "ties_dropped": len(judgeable) - len({p.prompt_id for p in pairs}),
        "mean_candidate_score": sum(c.score for c in candidates) / n,
        "best_of_k_score": sum(
            max(c.score for c in candidates[i : i + k]) for i in range(0, len(candidates), k)
        ) / max(len(judgeable), 1),
        "mean_candidate_tokens": sum(c.n_tokens for c in candidates) / n,
        "mean_margin": sum(p.score_chosen - p.score_rejected for p in pairs) / max(len(pairs), 1),
    }
