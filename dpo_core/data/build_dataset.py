"""Stage 1, build dataset: load prompts, validate, dedupe, filter, split, decontaminate.

Every input row ends up in exactly one of ``train.jsonl``, ``eval.jsonl`` or ``rejected.jsonl``;
a rejected row keeps its original content with ``_row`` (its index in the source) and
``_reason`` (what is wrong and what to do), so nothing a user supplied is silently lost.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import Field

from dpo_core.common.config import config_dataclass
from dpo_core.common.digest import digest_files
from dpo_core.common.io import read_rows, write_jsonl
from dpo_core.common.records import PromptRecord
from dpo_core.data.instructions import INSTRUCTION_SET_PATH, validate_instruction

BUILTIN = "builtin"


@config_dataclass
class BuildConfig:
    source: str = Field(BUILTIN, description="'builtin' (the shipped instruction set), a JSONL/JSON/CSV/Parquet "
                                             "file, a saved datasets folder or a hub dataset id")
    eval_source: str | None = Field(None, description="Held-out prompts (default: the builtin eval split, or "
                                                      "eval_fraction of a user source)")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of a user source held out without eval_source")
    max_train: int | None = Field(None, ge=1, description="Keep at most this many training prompts (shuffled by seed)")
    max_eval: int | None = Field(None, ge=1, description="Keep at most this many held-out prompts")
    max_prompt_chars: int = Field(4000, ge=1, description="Longer prompts are rejected: training would truncate them")
    decontaminate_ngram: int = Field(8, ge=3, description="Word n-gram length compared with held-out prompts")
    decontaminate_overlap: float = Field(0.8, gt=0.0, le=1.0, description="Drop a training prompt when this share "
                                                                        "of its n-grams occurs in held-out prompts")
    seed: int = Field(0, ge=0, description="Seeds the shuffle behind max_train, max_eval and the held-out split")


@dataclass
class BuildResult:
    train_path: str
    eval_path: str
    rejected_path: str
    digest: str  # of train + eval files: downstream cache keys use it
    counts: dict = field(default_factory=dict)


def build_dataset(cfg: BuildConfig, out_dir: Path) -> BuildResult:
    out_dir = Path(out_dir)
    rejected: list[dict] = []
    train_rows, eval_rows = _load_sources(cfg)
    train, rejected_train = _validate(train_rows, cfg, "source")
    held_out, rejected_eval = _validate(eval_rows, cfg, "eval_source")
    rejected += rejected_train + rejected_eval

    held_out, dup_eval = _dedupe(held_out)
    train, dup_train = _dedupe(train)
    train, contaminated = _decontaminate(train, held_out, cfg.decontaminate_ngram, cfg.decontaminate_overlap)
    rejected += dup_eval + dup_train + contaminated

    rng = random.Random(cfg.seed)
    rng.shuffle(train)
    train = train[: cfg.max_train] if cfg.max_train else train
    held_out = held_out[: cfg.max_eval] if cfg.max_eval else held_out
    rejected_path = write_jsonl(out_dir / "rejected.jsonl", rejected)  # first: kept even if the build fails
    if not train:
        raise ValueError(f"no usable training prompts: all {len(train_rows)} rows were rejected; see {rejected_path}")
    if not held_out:
        raise ValueError(f"no usable held-out prompts for evaluation; see {rejected_path}")

    paths = {
        "train": write_jsonl(out_dir / "train.jsonl", (r.to_dict() for r in train)),
        "eval": write_jsonl(out_dir / "eval.jsonl", (r.to_dict() for r in held_out)),
        "rejected": rejected_path,
    }
    counts = {
        "rows_in": len(train_rows) + len(eval_rows),
        "train": len(train),
        "eval": len(held_out),
        "rejected": len(rejected),
        "rejected_invalid": len(rejected_train) + len(rejected_eval),
        "rejected_duplicate": len(dup_train) + len(dup_eval),
        "rejected_contaminated": len(contaminated),
    }
    (out_dir / "stats.json").write_text(json.dumps({"config": asdict(cfg), "counts": counts}, indent=2))
    return BuildResult(
        train_path=str(paths["train"]),
        eval_path=str(paths["eval"]),
        rejected_path=str(paths["rejected"]),
        digest=digest_files([paths["train"], paths["eval"]]),
        counts=counts,
    )


def _load_sources(cfg: BuildConfig) -> tuple[list[dict], list[dict]]:
    """Rows for training and held-out evaluation, before validation."""
    if cfg.source == BUILTIN:
        rows = read_rows(str(INSTRUCTION_SET_PATH))
        train = [r for r in rows if r["split"] == "train"]
        held_out = [r for r in rows if r["split"] == "eval"]
    else:
        train = read_rows(cfg.source)
        held_out = []
        if cfg.eval_source is None:
            rng = random.Random(cfg.seed)
            order = list(range(len(train)))
            rng.shuffle(order)
            n_eval = max(1, round(len(train) * cfg.eval_fraction))
            eval_idx = set(order[:n_eval])
            held_out = [r | {"_row": i} for i, r in enumerate(train) if i in eval_idx]
            train = [r | {"_row": i} for i, r in enumerate(train) if i not in eval_idx]
    if cfg.eval_source is not None:
        held_out = read_rows(cfg.eval_source)
    return train, held_out


def _validate(rows: list[dict], cfg: BuildConfig, source_name: str) -> tuple[list[PromptRecord], list[dict]]:
    """Convert rows to PromptRecords; rows that fail come back with their reason."""
    kept, rejected = [], []
    for i, row in enumerate(rows):
        index = row.get("_row", i)
        try:
            record = _to_record(row, index)
            if len(record.text) > cfg.max_prompt_chars:
                raise ValueError(
                    f"prompt has {len(record.text)} characters, over max_prompt_chars={cfg.max_prompt_chars}; "
                    "shorten it or raise the limit"
                )
        except (ValueError, TypeError) as e:
            rejected.append({k: v for k, v in row.items() if k != "_row"} | {
                "_source": source_name, "_row": index, "_reason": str(e)})
            continue
        kept.append(record)
    return kept, rejected


def _to_record(row: dict, index: int) -> PromptRecord:
    """Accept ``messages``, a ``prompt`` string, or a conversational ``prompt`` list."""
    if not isinstance(row, dict):
        raise ValueError(f"row {index}: expected an object, got {type(row).__name__}")
    where = f"row {index}"
    messages = row.get("messages")
    if messages is None:
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError(f"{where}: field 'prompt' is empty; give the prompt text")
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list):
            messages = prompt
        else:
            raise ValueError(f"{where}: needs a 'prompt' (string or list of messages) or a 'messages' field")
    instructions = row.get("instructions") or []
    if isinstance(instructions, str):  # CSV cells hold JSON text
        try:
            instructions = json.loads(instructions)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: field 'instructions' is not valid JSON ({e.msg})") from e
    if not isinstance(instructions, list):
        raise ValueError(f"{where}: field 'instructions' must be a list of {{kind, args}} objects")
    for j, instr in enumerate(instructions):
        try:
            validate_instruction(instr)
        except ValueError as e:
            raise ValueError(f"{where}: instructions[{j}]: {e}") from e
    try:
        return PromptRecord(id=str(row.get("id") or f"row-{index}"), messages=messages, instructions=instructions)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def _normalize(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _dedupe(records: list[PromptRecord]) -> tuple[list[PromptRecord], list[dict]]:
    seen: dict[str, str] = {}
    kept, dropped = [], []
    for r in records:
        key = _normalize(r.text)
        if key in seen:
            dropped.append(r.to_dict() | {"_reason": f"duplicate of prompt {seen[key]}; remove one copy"})
            continue
        seen[key] = r.id
        kept.append(r)
    return kept, dropped


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _normalize(text).split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _decontaminate(train: list[PromptRecord], held_out: list[PromptRecord], n: int, overlap: float):
    """Drop training prompts whose word n-grams largely occur in held-out prompts.

    A share rather than any single hit, because instruction sentences ("answer in lowercase")
    legitimately repeat across splits while the task itself must not."""
    owner: dict[tuple[str, ...], str] = {}
    for r in held_out:
        for g in _ngrams(r.text, n):
            owner.setdefault(g, r.id)
    kept, dropped = [], []
    for r in train:
        grams = _ngrams(r.text, n)
        hits = [owner[g] for g in grams if g in owner]
        if len(hits) < overlap * len(grams):
            kept.append(r)
            continue
        share = len(hits) / len(grams)
        dropped.append(r.to_dict() | {
            "_reason": f"contaminated: {share:.0%} of its {n}-word sequences occur in held-out prompt {hits[0]}"})
    return kept, dropped
