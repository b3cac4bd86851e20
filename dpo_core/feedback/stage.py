"""Stage 2, collect AI feedback: sample K answers per prompt from a pool of generators, have a
judge score them, binarize into preference pairs.

Every sample and every judgement is stored in a durable item cache (dpo_core.feedback.item_cache) the
moment it completes, keyed by what determines it: the prompt, the generator, the sampling
settings and sample index; the judge, its prompt version and the candidates. Generators and
judges enter the key by ``cache_id``: a local model by its weights (a folder retrained in place
is another model), a served one by its URL and model name. A stage killed at any point and run
again asks no model twice for a finished item. Items that fail are set aside in
``set_aside.jsonl`` with their reason and the judge's raw text; a failed request is tried again
by the next run, an answer that would not parse after the re-asks is not.

Judges (``judge``): ``verifiable`` (the prompts' checkable instructions), ``rubric:<backend>``
(UltraFeedback aspects, 1-5 with rationales), ``pairwise:<backend>`` (every two candidates, both
orders) or ``reward:<model ref>`` (a sequence-classification reward model). A backend is
``local:<model ref>``, ``vllm:<model ref>`` or ``openai:<base_url>|<model>``.

By default binarization follows Zephyr: the highest-scored answer is chosen and a random
lower-scored one rejected; prompts whose answers all score the same carry no preference and are
dropped (see dpo_core.feedback.binarize for the other strategies).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dpo_core.common.digest import digest_files
from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.records import JudgedCandidate, PreferencePair, PromptRecord
from dpo_core.feedback.binarize import binarize
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.generators import make_generator
from dpo_core.feedback.item_cache import ItemCache, item_key
from dpo_core.feedback.prompts import judgeable_prompts
from dpo_core.inference.backends import make_backend
from dpo_core.inference.openai_client import Failure
from dpo_core.inference.vllm_engine import release_engine
from dpo_core.judges.verdicts import SetAside, Verdict


@dataclass
class FeedbackResult:
    candidates_path: str
    pairs_path: str
    digest: str  # of the pairs and candidates files
    stats: dict


def make_judge(cfg: FeedbackConfig):
    from dpo_core.judges.pairwise import PairwiseJudge
    from dpo_core.judges.reward_model import RewardModelJudge
    from dpo_core.judges.rubric import RubricJudge
    from dpo_core.judges.verifiable import VerifiableJudge

    kind, _, rest = cfg.judge.partition(":")
    if kind == "verifiable":
        return VerifiableJudge()
    if kind == "reward":
        return RewardModelJudge(rest)
    backend = make_backend(rest, cfg.client, cfg.engine)
    if kind == "rubric":
        return RubricJudge(backend, cfg.rubric_aspects, cfg.judge_max_retries, cfg.judge_max_new_tokens)
    return PairwiseJudge(backend, cfg.judge_max_retries, cfg.judge_max_new_tokens)


def collect_feedback(
    cfg: FeedbackConfig, model_ref: str, prompts_path: Path, out_dir: Path, on_progress: Callable[[int, int], None] | None = None
) -> FeedbackResult:
    out_dir = Path(out_dir)
    started = time.perf_counter()
    prompts = [PromptRecord(**r) for r in read_jsonl(prompts_path)][: cfg.max_prompts]
    judgeable = judgeable_prompts(prompts, cfg.judge, prompts_path)
    # beside out_dir: runs of the stage with other settings (binarization, margin) share the items
    cache = ItemCache(Path(cfg.cache_path) if cfg.cache_path else out_dir.parent / "feedback-items.sqlite")
    generators = [make_generator(spec, cfg.client, cfg.engine) for spec in [model_ref, *cfg.generators]]
    k = cfg.sampling.num_samples
    progress = _Progress(len(judgeable) * (len(generators) * k + 1), on_progress)
    set_aside: list[dict] = []

    samples = _generate(generators, judgeable, cfg.sampling, cache, progress, set_aside)
    if not cfg.judge.partition(":")[2].startswith("vllm:"):  # the judge's model needs the memory
        release_engine()
    judge = make_judge(cfg)
    verdicts = _judge(judge, judgeable, samples, cache, progress, set_aside)

    candidates: list[JudgedCandidate] = []
    pairs: list[PreferencePair] = []
    rng = random.Random(cfg.sampling.seed)
    judge_id = f"{judge.name}/{judge.version}"
    for prompt in judgeable:
        verdict = verdicts.get(prompt.id)
        if verdict is None:
            continue
        judged = [JudgedCandidate(prompt.id, i, source, text, n_tokens, score, detail.get("passed", []),
                                  {k: v for k, v in detail.items() if k != "passed"}, judge_id)
                  for i, ((source, text, n_tokens), score, detail) in
                  enumerate(zip(samples[prompt.id], verdict.scores, verdict.details, strict=True))]
        candidates += judged
        pairs += binarize(prompt, judged, cfg.binarize, rng, cfg.min_margin, cfg.length_tolerance)

    cand_path = write_jsonl(out_dir / "candidates.jsonl", (c.to_dict() for c in candidates))
    pairs_path = write_jsonl(out_dir / "pairs.jsonl", (p.to_dict() for p in pairs))
    write_jsonl(out_dir / "set_aside.jsonl", set_aside)
    _write_trl_formats(pairs, out_dir)
    stats = _stats(prompts, judgeable, candidates, pairs, set_aside, verdicts) | _costs(generators, judge, cache)
    stats["feedback_runtime_s"] = time.perf_counter() - started
    (out_dir / "stats.json").write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=2))
    cache.close()
    return FeedbackResult(str(cand_path), str(pairs_path), digest_files([pairs_path, cand_path]), stats)


class _Progress:
    def __init__(self, total: int, report):
        self.done, self.total, self.report = 0, total, report

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.report:
            self.report(self.done, self.total)


def _generate(generators, prompts, sampling, cache, progress, set_aside) -> dict[str, list[tuple[str, str, int]]]:
    """(generator, text, tokens) for every prompt's K samples from each generator, in a fixed order;
    cached samples are read back, the rest generated and stored one by one."""
    settings = asdict(sampling) | {"batch_size": None}  # batching changes no result worth a new key
    found: dict[tuple[str, str, int], tuple[str, int]] = {}
    by_id = {p.id: p for p in prompts}
    for gen in generators:
        keys = {(p.id, k): item_key("sample", prompt=p.messages, model=gen.cache_id, sampling=settings, k=k)
                for p in prompts for k in range(sampling.num_samples)}
        missing = []
        for (pid, k), key in keys.items():
            hit = cache.get(key)
            if hit is None:
                missing.append((pid, k))
            else:
                found[(gen.name, pid, k)] = (hit["text"], hit["n_tokens"])
        progress.step(len(keys) - len(missing))

        def on_sample(i, sample, gen=gen, missing=missing, keys=keys):
            pid, k = missing[i]
            progress.step()
            if isinstance(sample, Failure):
                set_aside.append({"stage": "generation", "prompt_id": pid, "generator": gen.name, "sample": k,
                                  "reason": sample.reason})
                return
            cache.put(keys[(pid, k)], {"text": sample.text, "n_tokens": sample.n_tokens})
            found[(gen.name, pid, k)] = (sample.text, sample.n_tokens)

        gen.run([(by_id[pid].messages, k) for pid, k in missing], sampling, on_sample)
    return {p.id: [(g.name, *found[(g.name, p.id, k)]) for g in generators for k in range(sampling.num_samples)
                   if (g.name, p.id, k) in found] for p in prompts}


def _judge(judge, prompts, samples, cache, progress, set_aside) -> dict[str, Verdict]:
    """The judge's verdict on every prompt with at least two candidates; cached ones read back."""
    verdicts: dict[str, Verdict] = {}
    todo, keys = [], {}
    for p in prompts:
        texts = [text for _, text, _ in samples[p.id]]
        if len(texts) < 2:
            set_aside.append({"stage": "judging", "prompt_id": p.id, "reason": f"only {len(texts)} candidate(s)"})
            progress.step()
            continue
        keys[p.id] = item_key("judgement", judge=judge.cache_id, version=judge.version, prompt=p.messages,
                              instructions=p.instructions, candidates=texts)
        hit = cache.get(keys[p.id])
        if hit is None:
            todo.append((p, texts))
        elif "reason" in hit:
            set_aside.append({"stage": "judging", "prompt_id": p.id} | hit)
            progress.step()
        else:
            verdicts[p.id] = Verdict(**hit)
            progress.step()

    def on_done(i, result):
        prompt = todo[i][0]
        progress.step()
        if isinstance(result, SetAside):
            if not result.retryable:  # would fail the same way again: remember it
                cache.put(keys[prompt.id], asdict(result))
            set_aside.append({"stage": "judging", "prompt_id": prompt.id} | asdict(result))
            return
        cache.put(keys[prompt.id], asdict(result))
        verdicts[prompt.id] = result

    judge.judge(todo, on_done)
    return verdicts


def _write_trl_formats(pairs: list[PreferencePair], out_dir: Path) -> None:
    """The pairs as Parquet and as a saved ``datasets`` folder: TRL's DPOTrainer loads either as is."""
    import datasets

    columns = list(PreferencePair.__dataclass_fields__)
    dataset = datasets.Dataset.from_list([p.to_dict() for p in pairs]) if pairs else datasets.Dataset.from_dict(
        {k: [] for k in columns})
    dataset.to_parquet(str(out_dir / "pairs.parquet"))
    dataset.save_to_disk(str(out_dir / "pairs_dataset"))


def _stats(prompts, judgeable, candidates, pairs, set_aside, verdicts) -> dict:
    n = max(len(candidates), 1)
    by_prompt: dict[str, list[float]] = {}
    for c in candidates:
        by_prompt.setdefault(c.prompt_id, []).append(c.score)
    unparseable = sum(1 for s in set_aside if s["stage"] == "judging" and s.get("retryable") is False)
    tokens = {c.text: c.n_tokens for c in candidates}
    return {
        "prompts": len(prompts),
        "prompts_without_instructions": len(prompts) - len(judgeable),
        "candidates": len(candidates),
        "pairs": len(pairs),
        "prompts_with_pairs": len({p.prompt_id for p in pairs}),
        "ties_dropped": len(verdicts) - len({p.prompt_id for p in pairs}),
        "set_aside_generation": sum(1 for s in set_aside if s["stage"] == "generation"),
        "set_aside_judging": sum(1 for s in set_aside if s["stage"] == "judging"),
        "judge_parse_failure_rate": unparseable / max(len(verdicts) + unparseable, 1),
        "mean_candidate_score": sum(c.score for c in candidates) / n,
        "best_of_k_score": sum(max(s) for s in by_prompt.values()) / max(len(by_prompt), 1),
        "mean_candidate_tokens": sum(c.n_tokens for c in candidates) / n,
        "mean_margin": sum(p.score_chosen - p.score_rejected for p in pairs) / max(len(pairs), 1),
        "mean_chosen_tokens": sum(tokens.get(p.chosen[0]["content"], 0) for p in pairs) / max(len(pairs), 1),
        "mean_rejected_tokens": sum(tokens.get(p.rejected[0]["content"], 0) for p in pairs) / max(len(pairs), 1),
    }


def _costs(generators, judge, cache) -> dict:
    """Requests, retries, failures and tokens per generator and judge backend, and cache hits."""
    out = {"cache_hits": cache.hits, "cache_misses": cache.misses}
    backends = [("generator", g) for g in generators] + [("judge", getattr(judge, "backend", None))]
    for role, backend in backends:
        usage = getattr(backend, "usage", None)
        if usage is None:
            continue
        for name, value in asdict(usage).items():
            out[f"{role}_{name}"] = out.get(f"{role}_{name}", 0) + value
    for name, value in getattr(judge, "stats", {}).items():
        out[name] = value
    if getattr(judge, "stats", {}).get("comparisons"):
        out["position_disagreement_rate"] = judge.stats["position_disagreements"] / judge.stats["comparisons"]
    return out
