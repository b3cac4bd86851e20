"""The build stage's filters, alike for prompts, SFT conversations and preference pairs: length,
dedupe, the held-out split and decontamination. Each returns the items it keeps and the rejected
rows of those it drops, so nothing is lost silently."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Hashable

from dpo_core.common.records import PreferencePair, PromptRecord, SFTRecord
from dpo_core.data.sources import Item

_WHAT = {PromptRecord: "prompt", SFTRecord: "conversation", PreferencePair: "pair"}


def content_key(record) -> tuple:
    """What makes two records the same.

    Prompts compare by their words (case and punctuation aside): a reworded copy adds nothing to sample.
    Conversations and pairs compare by their text with spacing squashed: in answers, "a+b" and "a-b" differ."""
    if isinstance(record, PromptRecord):
        return tuple((m["role"], _normalize(m["content"])) for m in record.messages)
    turns = record.messages if isinstance(record, SFTRecord) else [*record.prompt, *record.chosen, *record.rejected]
    return tuple((m["role"], " ".join(m["content"].split())) for m in turns)


def prompt_of(record) -> PromptRecord:
    """The prompt a record answers: the conversation up to its last user turn."""
    if isinstance(record, PromptRecord):
        return record
    if isinstance(record, PreferencePair):
        return PromptRecord(id=record.prompt_id, messages=record.prompt)
    last_user = max(i for i, m in enumerate(record.messages) if m["role"] == "user")
    return PromptRecord(id=record.id, messages=record.messages[: last_user + 1])


def too_long(items: list[Item], max_chars: int) -> tuple[list[Item], list[dict]]:
    """Prompts whose last turn is longer than ``max_chars``: sampling would have to truncate them."""
    kept, dropped = [], []
    for item in items:
        n = len(item.record.text)
        if n <= max_chars:
            kept.append(item)
        else:
            dropped.append(item.reject("invalid", f"{item.where}: prompt has {n} characters, over max_prompt_chars="
                                                  f"{max_chars}; shorten it or raise the limit"))
    return kept, dropped


def dedupe(items: list[Item], key: Callable[[Item], Hashable] = lambda item: content_key(item.record),
           same: str = "duplicate of", fix: str = "remove one copy") -> tuple[list[Item], list[dict]]:
    """The first of each ``key``; later ones are rejected as duplicates naming the first."""
    first: dict[Hashable, Item] = {}
    kept, dropped = [], []
    for item in items:
        k = key(item)
        if k in first:
            seen = first[k]
            at = f"line {seen.row['_line']}" if seen.row["_source"] == item.row["_source"] else seen.where
            dropped.append(item.reject("duplicate", f"{item.where}: {same} {_WHAT[type(seen.record)]} {seen.id} ({at}); {fix}"))
            continue
        first[k] = item
        kept.append(item)
    return kept, dropped


def dedupe_ids(items: list[Item]) -> tuple[list[Item], list[dict]]:
    """Rows that reuse an earlier row's id: later stages key prompts and conversations by id."""
    return dedupe(items, key=lambda item: item.id, same="its id is already used by", fix="give each row its own id")


def hold_out(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """(held-out prompts, the items left for training): ``fraction`` of the distinct prompts, by seed.

    Items sharing a prompt go together, so no held-out prompt is also trained on. A held-out pair or
    conversation becomes its prompt (``prompt_of``) and leaves training."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(content_key(prompt_of(item.record)), []).append(item)
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    chosen = set(order[: max(1, round(len(groups) * fraction))])
    held_out, train = [], []
    for i, group in enumerate(groups.values()):
        if i in chosen:
            held_out.append(Item(prompt_of(group[0].record), group[0].row))
        else:
            train += group
    return held_out, train


def decontaminate(items: list[Item], held_out: list[PromptRecord], n: int, overlap: float) -> tuple[list[Item], list[dict]]:
    """Drop items with a user turn whose word n-grams largely occur in held-out prompts.

    A share rather than any single hit, because instruction sentences ("answer in lowercase")
    legitimately repeat across splits while the task itself must not. Every user turn counts: a
    held-out prompt hidden in a conversation's second turn leaks as surely as in its first."""
    owner: dict[tuple[str, ...], str] = {}
    for record in held_out:
        for text in _user_turns(record):
            for g in _ngrams(text, n):
                owner.setdefault(g, record.id)
    kept, dropped = [], []
    for item in items:
        reason = ""
        for text in _user_turns(prompt_of(item.record)):
            grams = _ngrams(text, n)
            hits = [owner[g] for g in grams if g in owner]
            if len(hits) >= overlap * len(grams):
                reason = (f"{item.where}: contaminated: {len(hits) / len(grams):.0%} of its {n}-word sequences occur in "
                          f"held-out prompt {hits[0]}; keep it out of training or out of the held-out set")
                break
        if reason:
            dropped.append(item.reject("contaminated", reason))
        else:
            kept.append(item)
    return kept, dropped


def _user_turns(record: PromptRecord) -> list[str]:
    return [m["content"] for m in record.messages if m["role"] == "user"]


def _normalize(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The distinct word n-grams of ``text`` in order of first appearance (the whole text when shorter)."""
    words = _normalize(text).split()
    if len(words) < n:
        return [tuple(words)]
    return list(dict.fromkeys(tuple(words[i : i + n]) for i in range(len(words) - n + 1)))
