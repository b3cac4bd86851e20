"""Stage 1, build dataset: read the shipped instruction set or a team's prompts, SFT conversations
and preference pairs (shapes: ``shapes.py``; how a source's kind is told: ``sources.py``), then
validate, dedupe, hold out evaluation prompts and decontaminate.

Writes to ``out_dir``:
  train.jsonl     PromptRecord per line: prompts to sample answers for (empty when a team brought only
                  conversations and pairs)
  eval.jsonl      PromptRecord per line: held-out prompts, never empty
  transfer.jsonl  PromptRecord per line, when there is a transfer set: held-out prompts whose instructions
                  are worded unlike training's (and of kinds it never saw), to tell whether a gain transfers
  sft.jsonl       SFTRecord per line, when SFT conversations were given
  pairs.jsonl     PreferencePair per line (TRL's conversational prompt/chosen/rejected), when pairs were given
  rejected.jsonl  every row set aside: the row as given, ``_source`` (its file), ``_line`` (1-based; the row
                  number for Parquet and datasets), ``_category`` (one of REJECTIONS) and ``_reason`` (what to do)
  stats.json      the config, each source's kind and the counts

Held-out prompts are the shipped set's eval split; else ``eval_source``; else ``eval_fraction`` of
the distinct training prompts; else, when a team brought no prompts, ``eval_fraction`` of the
distinct prompts of its conversations and pairs, whose rows then leave training (``held_out_from_*``).
Transfer prompts are the shipped set's transfer split and/or ``transfer_source``; only verifiable
instructions score them, so a transfer prompt without any is rejected, as is one repeating a
held-out prompt. Training is decontaminated against both held-out sets. Each input row ends in one
output, is held out, or is rejected; ``max_train``/``max_eval`` then cap the prompts kept
(``max_eval`` each held-out set).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from dpo_core.common.config import config_dataclass
from dpo_core.common.digest import digest_files
from dpo_core.common.io import write_jsonl
from dpo_core.data.filters import decontaminate, dedupe, dedupe_ids, hold_out, too_long
from dpo_core.data.instructions import INSTRUCTION_SET_PATH
from dpo_core.data.shapes import KINDS, PAIRS, PROMPTS, SFT
from dpo_core.data.sources import Item, Loaded, load_source

BUILTIN = "builtin"
REJECTIONS = (  # the _category of a rejected row; counts has rejected_<category> for each
    "unreadable",  # the reader could not make an object of it: not JSON, not UTF-8, a CSV quoting error, null
    "invalid",  # an object that fits no shape, or breaks a record's rule (named in _reason)
    "wrong_kind",  # a row of another kind than its source's
    "empty_answer",  # a pair's chosen/rejected or a conversation's assistant turn is empty
    "equal_scores",  # a pair whose score_chosen equals score_rejected
    "chosen_equals_rejected",  # a pair whose two answers are the same text
    "duplicate",  # the same content, or the same id, as an earlier row
    "contaminated",  # a training row whose user turn largely repeats a held-out prompt
)


@config_dataclass
class BuildConfig:
    source: str = Field(BUILTIN, description="'builtin' (the shipped instruction set), or prompts, SFT conversations or "
                                             "preference pairs (the kind detected) in a JSONL/JSON/CSV/Parquet file, a "
                                             "saved datasets folder or a hub dataset id")
    source_kind: Literal["auto", "prompts", "sft", "pairs"] = Field(
        "auto", description="What source holds; 'auto' tells it from its rows (the shapes are in dpo_core/data/shapes.py)")
    sft_source: str | None = Field(None, description="SFT conversations beside source: messages ending in an assistant "
                                                     "turn (UltraChat) or ShareGPT conversations")
    pairs_source: str | None = Field(None, description="Preference pairs beside source: TRL standard or conversational, "
                                                       "UltraFeedback-binarized or Anthropic-HH rows")
    eval_source: str | None = Field(None, description="Held-out prompts (default: the builtin eval split, or "
                                                      "eval_fraction of the training prompts)")
    transfer_source: str | None = Field(None, description="Held-out prompts measuring transfer: instructions worded "
                                                          "unlike the training prompts' (any prompt file eval_source "
                                                          "accepts; only prompts with instructions are kept). With "
                                                          "source='builtin' the shipped transfer split is one too")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of distinct prompts held out without eval_source: "
                                                                  "of source's prompts, or of the conversations' and "
                                                                  "pairs' prompts when no prompts are given")
    max_train: int | None = Field(None, ge=1, description="Keep at most this many training prompts (shuffled by seed)")
    max_eval: int | None = Field(None, ge=1, description="Keep at most this many held-out prompts, and as many "
                                                         "transfer prompts")
    max_prompt_chars: int = Field(4000, ge=1, description="Longer prompts are rejected: sampling would truncate them "
                                                          "(conversations and pairs are truncated by the trainer)")
    decontaminate_ngram: int = Field(8, ge=3, description="Word n-gram length compared with held-out prompts")
    decontaminate_overlap: float = Field(0.8, gt=0.0, le=1.0, description="Drop a training prompt, conversation or pair "
                                                                        "when this share of a user turn's n-grams occurs "
                                                                        "in held-out prompts")
    seed: int = Field(0, ge=0, description="Seeds the shuffle behind max_train, max_eval and the held-out split")

    def __post_init__(self):
        if self.source == BUILTIN and self.source_kind not in ("auto", PROMPTS):
            raise ValueError(f"source_kind={self.source_kind!r}: source='builtin' holds prompts; give your file as "
                             "source, or leave source_kind at 'auto'")


@dataclass
class BuildResult:
    train_path: str
    eval_path: str
    rejected_path: str
    digest: str  # of every file later stages read (train, eval, transfer, sft, pairs): their cache keys use it
    counts: dict = field(default_factory=dict)  # numbers only: the task logs them as metrics
    sft_path: str | None = None
    pairs_path: str | None = None
    transfer_path: str | None = None  # held-out prompts worded unlike training's, when there are any
    kinds: dict = field(default_factory=dict)  # config field -> the kind its source holds


def build_dataset(cfg: BuildConfig, out_dir: Path) -> BuildResult:
    out_dir = Path(out_dir)
    loaded = _load_sources(cfg)
    rejected = [r for source in loaded for r in source.rejected]
    train, held_out, transfer = _prompt_sets(cfg, loaded)
    sft, pairs = _items(loaded, SFT), _items(loaded, PAIRS)

    train, long_train = too_long(train, cfg.max_prompt_chars)
    held_out, long_eval = too_long(held_out, cfg.max_prompt_chars)
    transfer, long_transfer = too_long(transfer, cfg.max_prompt_chars)
    transfer, unchecked = _with_instructions(transfer)
    held_out, dup_eval = _unique(held_out)
    transfer, dup_transfer = _unique(transfer)
    train, dup_train = _unique(train)
    sft, dup_sft = _unique(sft)
    pairs, dup_pairs = dedupe(pairs)  # pairs share prompt ids by design: only content makes a duplicate
    rejected += long_train + long_eval + long_transfer + unchecked + dup_eval + dup_transfer + dup_train + dup_sft + dup_pairs

    moved = {SFT: 0, PAIRS: 0}  # conversations and pairs whose prompts were held out
    if cfg.source != BUILTIN and cfg.eval_source is None:
        held_out, rest = hold_out(train or sft + pairs, cfg.eval_fraction, cfg.seed)
        if train:
            train = rest
        else:
            kept_sft, kept_pairs = [i for i in rest if i.kind == SFT], [i for i in rest if i.kind == PAIRS]
            moved = {SFT: len(sft) - len(kept_sft), PAIRS: len(pairs) - len(kept_pairs)}
            sft, pairs = kept_sft, kept_pairs
    kept, in_eval = dedupe(held_out + transfer)  # a prompt in both sets stays in eval, the one the gate reads
    transfer = kept[len(held_out):]
    rejected += in_eval
    against = ([i.record for i in held_out + transfer], cfg.decontaminate_ngram, cfg.decontaminate_overlap)
    train, contaminated_train = decontaminate(train, *against)
    sft, contaminated_sft = decontaminate(sft, *against)
    pairs, contaminated_pairs = decontaminate(pairs, *against)
    rejected += contaminated_train + contaminated_sft + contaminated_pairs

    rng = random.Random(cfg.seed)
    rng.shuffle(train)
    train = train[: cfg.max_train] if cfg.max_train else train
    held_out = held_out[: cfg.max_eval] if cfg.max_eval else held_out
    transfer = transfer[: cfg.max_eval] if cfg.max_eval else transfer
    rejected_path = write_jsonl(out_dir / "rejected.jsonl", rejected)  # first: kept even if the build fails
    if not (train or sft or pairs):
        raise ValueError(f"no usable training prompts, conversations or pairs: of {sum(s.rows_in for s in loaded)} rows, "
                         f"{len(rejected)} were rejected and {len(held_out)} held out; see {rejected_path}")
    if not held_out:
        raise ValueError(f"no usable held-out prompts for evaluation; see {rejected_path}")
    if cfg.transfer_source and not transfer:
        raise ValueError(f"no usable transfer prompts in transfer_source={cfg.transfer_source}; see {rejected_path}")

    paths = {
        "train": write_jsonl(out_dir / "train.jsonl", (i.record.to_dict() for i in train)),
        "eval": write_jsonl(out_dir / "eval.jsonl", (i.record.to_dict() for i in held_out)),
    }
    for name, items in (("transfer", transfer), ("sft", sft), ("pairs", pairs)):
        if items:
            paths[name] = write_jsonl(out_dir / f"{name}.jsonl", (i.record.to_dict() for i in items))
    by_category = Counter(r["_category"] for r in rejected)
    counts = {
        "rows_in": sum(s.rows_in for s in loaded),
        **{f"detected_{kind}": sum(s.detected[kind] for s in loaded) for kind in KINDS},
        "train": len(train),
        "eval": len(held_out),
        "transfer": len(transfer),
        "sft": len(sft),
        "pairs": len(pairs),
        "held_out_from_sft": moved[SFT],
        "held_out_from_pairs": moved[PAIRS],
        "rejected": len(rejected),
        **{f"rejected_{category}": by_category[category] for category in REJECTIONS},
        "blank_lines": sum(s.blank_lines for s in loaded),
        "control_chars_stripped": sum(s.control_chars_stripped for s in loaded),
    }
    kinds = {s.field: s.kind for s in loaded}
    sources = {s.field: {"source": s.source, "kind": s.kind, "detected": dict(s.detected)} for s in loaded}
    (out_dir / "stats.json").write_text(json.dumps({"config": asdict(cfg), "sources": sources, "counts": counts}, indent=2))
    return BuildResult(
        train_path=str(paths["train"]),
        eval_path=str(paths["eval"]),
        rejected_path=str(rejected_path),
        digest=digest_files(paths.values()),
        counts=counts,
        sft_path=str(paths["sft"]) if "sft" in paths else None,
        pairs_path=str(paths["pairs"]) if "pairs" in paths else None,
        transfer_path=str(paths["transfer"]) if "transfer" in paths else None,
        kinds=kinds,
    )


def _load_sources(cfg: BuildConfig) -> list[Loaded]:
    """Every configured source, read and converted; ``source`` first, as the order of the outputs follows."""
    plan = [
        ("source", str(INSTRUCTION_SET_PATH), PROMPTS) if cfg.source == BUILTIN else
        ("source", cfg.source, None if cfg.source_kind == "auto" else cfg.source_kind),
        ("eval_source", cfg.eval_source, PROMPTS),
        ("transfer_source", cfg.transfer_source, PROMPTS),
        ("sft_source", cfg.sft_source, SFT),
        ("pairs_source", cfg.pairs_source, PAIRS),
    ]
    return [load_source(path, name, kind) for name, path, kind in plan if path is not None]


def _prompt_sets(cfg: BuildConfig, loaded: list[Loaded]) -> tuple[list[Item], list[Item], list[Item]]:
    """(training prompts, held-out prompts, transfer prompts) as given, before any filter."""
    train = [i for s in loaded if s.field == "source" and s.kind == PROMPTS for i in s.items]
    held_out = [i for s in loaded if s.field == "eval_source" for i in s.items]
    transfer = [i for s in loaded if s.field == "transfer_source" for i in s.items]
    if cfg.source == BUILTIN:
        held_out += [i for i in train if i.row["split"] == "eval"]
        transfer += [i for i in train if i.row["split"] == "transfer"]
        train = [i for i in train if i.row["split"] == "train"]
    return train, held_out, transfer


def _items(loaded: list[Loaded], kind: str) -> list[Item]:
    return [i for s in loaded if s.kind == kind and s.field not in ("eval_source", "transfer_source") for i in s.items]


def _with_instructions(transfer: list[Item]) -> tuple[list[Item], list[dict]]:
    """Transfer prompts with verifiable instructions: only those checks score transfer."""
    kept = [i for i in transfer if i.record.instructions]
    dropped = [i.reject("invalid", f"{i.where}: a transfer prompt needs verifiable instructions, as only they score "
                                   "transfer; add some, or pass the file as eval_source") for i in transfer
               if not i.record.instructions]
    return kept, dropped


def _unique(items: list[Item]) -> tuple[list[Item], list[dict]]:
    """Prompts and conversations: one per content, then one per id (later stages key them by id)."""
    items, same_content = dedupe(items)
    items, same_id = dedupe_ids(items)
    return items, same_content + same_id
