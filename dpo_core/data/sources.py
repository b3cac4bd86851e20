"""One configured source read into records of one kind, with every row it could not use set aside.

A source's kind is the one its config field declares (``sft_source``: SFT conversations,
``pairs_source``: preference pairs, ``eval_source``: prompts, ``source``: ``source_kind`` unless
"auto"), else the kind most of its rows have (``shapes.detect_kind``); an even split is an error
asking to declare it. A declared kind that fewer rows have than another is an error too: the file
is most likely in the wrong field. Rows of another kind are rejected (``wrong_kind``) with the field
they belong in; rows whose fields name no kind are read as the source's kind, so their rejection
says what is missing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dpo_core.common.io import read_rows
from dpo_core.common.records import PreferencePair, PromptRecord, SFTRecord
from dpo_core.data.shapes import KIND_NAMES, PAIRS, PROMPTS, SFT, RowError, detect_kind, to_record

FIELD_FOR_KIND = {PROMPTS: "source or eval_source", SFT: "sft_source", PAIRS: "pairs_source"}


@dataclass(frozen=True)
class Item:
    """A record with the row it came from: what ``rejected.jsonl`` keeps if a later step drops it."""

    record: PromptRecord | SFTRecord | PreferencePair
    row: dict  # as read, with _source and _line

    @property
    def kind(self) -> str:
        return {PromptRecord: PROMPTS, SFTRecord: SFT, PreferencePair: PAIRS}[type(self.record)]

    @property
    def id(self) -> str:
        return self.record.prompt_id if isinstance(self.record, PreferencePair) else self.record.id

    @property
    def where(self) -> str:
        return f"{self.row['_source']}:{self.row['_line']}"

    def reject(self, category: str, reason: str) -> dict:
        return reject(self.row, category, reason)


@dataclass
class Loaded:
    """What one source gave: its kind, its records, and its rows set aside."""

    field: str  # the config field that named it
    source: str  # what that field holds
    kind: str
    items: list[Item] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    detected: Counter = field(default_factory=Counter)  # rows per kind their fields name
    rows_in: int = 0  # rows read, including those the reader could not parse; blank lines excluded
    blank_lines: int = 0
    control_chars_stripped: int = 0


def load_source(source: str, field_name: str, declared: str | None) -> Loaded:
    """Read ``source`` (named by config field ``field_name``) and convert its rows; ``declared``: its kind, or None."""
    try:
        read = read_rows(source)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{field_name}: {e}") from e
    except (OSError, ValueError) as e:
        raise ValueError(f"{field_name}: {e}") from e
    kinds = [detect_kind(row) for row in read.rows]
    detected = Counter(k for k in kinds if k)
    kind = _source_kind(detected, field_name, source, declared)
    loaded = Loaded(field_name, source, kind, detected=detected, rows_in=len(read.rows) + len(read.rejected),
                    blank_lines=read.blank_lines, control_chars_stripped=read.control_chars_stripped)
    loaded.rejected = [r | {"_category": "unreadable"} for r in read.rejected]
    for row, row_kind in zip(read.rows, kinds, strict=True):
        where = f"{source}:{row['_line']}"
        if row_kind not in (None, kind):
            loaded.rejected.append(reject(row, "wrong_kind", (
                f"{where}: this row is one of the {KIND_NAMES[row_kind]} but {field_name} holds {KIND_NAMES[kind]} "
                f"({detected[kind]} of {detected.total()} rows); put it in a file of its own and pass that as "
                f"{FIELD_FOR_KIND[row_kind]}")))
            continue
        try:
            loaded.items.append(Item(to_record(row, kind, where, default_id=f"{_stem(source)}-{row['_line']}"), row))
        except RowError as e:
            loaded.rejected.append(reject(row, e.category, str(e)))
    return loaded


def reject(row: dict, category: str, reason: str) -> dict:
    """A rejected row: the row as given, its ``_source`` and ``_line``, and why it was set aside."""
    return row | {"_category": category, "_reason": reason}


def _source_kind(detected: Counter, field_name: str, source: str, declared: str | None) -> str:
    ranked = detected.most_common()
    if declared is None:
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            (a, n), (b, _) = ranked[:2]
            raise ValueError(f"{field_name}: {source} has as many {KIND_NAMES[a]} as {KIND_NAMES[b]} ({n} rows each); "
                             "set source_kind to the kind it holds, or split the file")
        return ranked[0][0] if ranked else PROMPTS
    if ranked and ranked[0][1] > detected[declared]:
        top, n = ranked[0]
        fix = f"set source_kind to {top!r} or 'auto'" if field_name == "source" else f"pass it as {FIELD_FOR_KIND[top]}"
        raise ValueError(f"{field_name}: {source} holds {KIND_NAMES[top]} ({n} of {detected.total()} rows), not "
                         f"{KIND_NAMES[declared]}; {fix}")
    return declared


def _stem(source: str) -> str:
    return Path(source.rstrip("/")).stem or "row"
