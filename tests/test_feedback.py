"""Binarization rules and the feedback stage's files on a tiny model."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from datasets import load_from_disk

from dpo_core.common.io import read_jsonl
from dpo_core.common.records import JudgedCandidate, PreferencePair, PromptRecord
from dpo_core.data.build_dataset import BuildConfig, build_dataset
from dpo_core.feedback.binarize import binarize
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.stage import collect_feedback
from dpo_core.inference.config import SamplingConfig

PROMPT = PromptRecord("p1", [{"role": "user", "content": "hi"}], [{"kind": "lowercase", "args": {}}])


def _cands(scores):
    return [JudgedCandidate("p1", i, "m", f"answer {i}", 3, s, [s == 1.0]) for i, s in enumerate(scores)]


def _texts(pairs):
    return sorted((p.chosen[0]["content"], p.rejected[0]["content"]) for p in pairs)


def test_best_is_chosen_and_rejected_is_lower():
    for seed in range(20):
        (pair,) = binarize(PROMPT, _cands([0.5, 1.0, 0.0, 0.5]), "best_vs_random", random.Random(seed))
        assert pair.chosen[0]["content"] == "answer 1" and pair.score_chosen == 1.0
        assert pair.score_rejected < 1.0


def test_rejected_is_drawn_from_all_lower_candidates():
    picks = {binarize(PROMPT, _cands([1.0, 0.5, 0.0, 0.5]), "best_vs_random", random.Random(s))[0].rejected[0]["content"]
             for s in range(50)}
    assert picks == {"answer 1", "answer 2", "answer 3"}


def test_best_vs_worst_and_all_pairs():
    cands = _cands([1.0, 0.5, 0.0, 0.5])
    assert _texts(binarize(PROMPT, cands, "best_vs_worst", random.Random(0))) == [("answer 0", "answer 2")]
    everything = binarize(PROMPT, cands, "all_pairs", random.Random(0))
    assert _texts(everything) == [("answer 0", "answer 1"), ("answer 0", "answer 2"), ("answer 0", "answer 3"),
                                  ("answer 1", "answer 2"), ("answer 3", "answer 2")]  # the 0.5/0.5 tie is dropped
    wide = binarize(PROMPT, cands, "all_pairs", random.Random(0), min_margin=0.75)
    assert _texts(wide) == [("answer 0", "answer 2")]


@pytest.mark.parametrize("strategy", ["best_vs_random", "best_vs_worst", "all_pairs"])
def test_all_tied_or_below_margin_gives_no_pair(strategy):
    assert binarize(PROMPT, _cands([0.5, 0.5, 0.5]), strategy, random.Random(0)) == []
    assert binarize(PROMPT, _cands([0.5, 0.6]), strategy, random.Random(0), min_margin=0.5) == []


def _sized(scores_and_tokens):
    return [JudgedCandidate("p1", i, "m", f"answer {i}", n, s, []) for i, (s, n) in enumerate(scores_and_tokens)]


def test_length_tolerance_chooses_the_shortest_near_best_answer():
    # answer 0 is best but longest; answer 1 is within 0.1 and shortest; answer 3 is short but too far below
    cands = _sized([(1.0, 90), (0.95, 20), (0.5, 40), (0.0, 10)])
    for seed in range(10):
        (pair,) = binarize(PROMPT, cands, "best_vs_worst", random.Random(seed), length_tolerance=0.1)
        assert (pair.chosen[0]["content"], pair.rejected[0]["content"]) == ("answer 1", "answer 3")
        (plain,) = binarize(PROMPT, cands, "best_vs_worst", random.Random(seed))
        assert plain.chosen[0]["content"] == "answer 0"
    # the rejected answer must score below the (shorter) chosen one, by min_margin too
    rejected = {binarize(PROMPT, cands, "best_vs_random", random.Random(s), length_tolerance=0.1)[0].rejected[0]["content"]
                for s in range(30)}
    assert rejected == {"answer 2", "answer 3"}
    assert binarize(PROMPT, _sized([(1.0, 90), (0.95, 20)]), "best_vs_worst", random.Random(0),
                    length_tolerance=0.1) == []  # nothing left below the chosen one


def test_length_tolerance_refuses_all_pairs():
    with pytest.raises(ValueError, match="length_tolerance"):
        FeedbackConfig(binarize="all_pairs", length_tolerance=0.1)


def test_collect_feedback_writes_candidates_and_valid_pairs(tiny_model, tmp_path):
    data = Path(__file__).parent / "data"
    built = build_dataset(BuildConfig(source=str(data / "prompts.jsonl"), eval_source=str(data / "eval_prompts.jsonl")),
                          tmp_path / "data")
    prompts = built.train_path
    cfg = FeedbackConfig(sampling=SamplingConfig(num_samples=4, max_new_tokens=16, temperature=1.0))
    result = collect_feedback(cfg, tiny_model, prompts, tmp_path / "feedback")
    candidates = read_jsonl(result.candidates_path)
    assert len(candidates) == 4 * len(read_jsonl(prompts))
    assert all(c["model"] == tiny_model and 0 < c["n_tokens"] <= 16 for c in candidates)
    pairs = [PreferencePair(**p) for p in read_jsonl(result.pairs_path)]  # validates every record
    assert result.stats["pairs"] == len(pairs) > 0
    assert result.stats["pairs"] + result.stats["ties_dropped"] == len(read_jsonl(prompts))
    trl_ready = load_from_disk(str(tmp_path / "feedback" / "pairs_dataset"))
    assert trl_ready.num_rows == len(pairs) and trl_ready[0]["chosen"][0]["role"] == "assistant"
    assert (tmp_path / "feedback" / "pairs.parquet").exists()


def test_generic_prompts_under_the_verifiable_judge_stop_before_any_generation(tiny_model, tmp_path):
    from dpo_core.common.io import write_jsonl

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [
        PromptRecord(f"g{i}", [{"role": "user", "content": f"Explain TCP slow start, take {i}."}]).to_dict()
        for i in range(3)])
    cache = tmp_path / "items.sqlite"
    with pytest.raises(ValueError, match=r"none of its 3 prompts has verifiable instructions.*set feedback.judge"):
        collect_feedback(FeedbackConfig(cache_path=str(cache)), tiny_model, prompts, tmp_path / "out")
    assert not cache.exists()  # nothing was generated, so nothing was stored
