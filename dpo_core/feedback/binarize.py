"""Binarization: turn a prompt's judged candidates into preference pairs.

  best_vs_random  the best-scored candidate against a random lower-scored one (Zephyr/UltraFeedback)
  best_vs_worst   the best against the worst (largest margin, one pair per prompt)
  all_pairs       every pair whose scores differ by at least ``min_margin`` (more data per prompt)

Candidates with equal scores never form a pair; a prompt whose candidates all tie gives none.
Among equally-best (or equally-worst) candidates the pick is random, seeded.

Length watch (``length_tolerance``): the chosen answer is the shortest of those scoring within the
tolerance of the best, since DPO, iterated above all, learns that longer answers win (Park et al.
2024, "Disentangling Length from Quality in DPO"); the rejected one must still score lower.
"""

from __future__ import annotations

import random
from itertools import combinations

from dpo_core.common.records import JudgedCandidate, PreferencePair, PromptRecord

STRATEGIES = ("best_vs_random", "best_vs_worst", "all_pairs")


def binarize(prompt: PromptRecord, judged: list[JudgedCandidate], strategy: str, rng: random.Random,
             min_margin: float = 0.0, length_tolerance: float = 0.0) -> list[PreferencePair]:
    if strategy not in STRATEGIES:
        raise ValueError(f"binarization strategy {strategy!r} is not one of {STRATEGIES}")
    if length_tolerance and strategy == "all_pairs":
        raise ValueError("length_tolerance picks one chosen answer per prompt: use best_vs_random or best_vs_worst")
    best_score, worst_score = max(c.score for c in judged), min(c.score for c in judged)
    spread = best_score - worst_score
    if spread == 0 or spread < min_margin:
        return []
    if strategy == "all_pairs":
        return [_pair(prompt, *sorted((a, b), key=lambda c: -c.score)) for a, b in combinations(judged, 2)
                if abs(a.score - b.score) >= min_margin and a.score != b.score]
    best = _chosen(judged, best_score, length_tolerance, rng)
    lower = [c for c in judged if c.score < best.score and best.score - c.score >= min_margin]
    if not lower:  # the shortest near-best answer leaves nothing scored far enough below it
        return []
    if strategy == "best_vs_worst":
        worse = rng.choice([c for c in lower if c.score == worst_score])
    else:
        worse = rng.choice(lower)
    return [_pair(prompt, best, worse)]


def _chosen(judged: list[JudgedCandidate], best_score: float, length_tolerance: float,
            rng: random.Random) -> JudgedCandidate:
    """A best-scored candidate, or with a tolerance the shortest scoring within it of the best."""
    if not length_tolerance:
        return rng.choice([c for c in judged if c.score == best_score])
    near = [c for c in judged if c.score >= best_score - length_tolerance]
    shortest = min(c.n_tokens for c in near)
    return rng.choice([c for c in near if c.n_tokens == shortest])


def _pair(prompt: PromptRecord, chosen: JudgedCandidate, rejected: JudgedCandidate) -> PreferencePair:
    return PreferencePair(
        prompt_id=prompt.id,
        prompt=prompt.messages,
        chosen=[{"role": "assistant", "content": chosen.text}],
        rejected=[{"role": "assistant", "content": rejected.text}],
        score_chosen=chosen.score,
        score_rejected=rejected.score,
        chosen_model=chosen.model,
        rejected_model=rejected.model,
        chosen_rationale=chosen.details.get("rationale", ""),
        rejected_rationale=rejected.details.get("rationale", ""),
        judge=chosen.judge,
    )
