"""What a judge returns for one prompt and its candidates: a verdict, or a reason to set it aside.

Every judge has ``name`` (shown in records), ``cache_id`` (what its verdicts depend on: a local
model's weights, a server's URL and model name) and ``version`` (its prompts), the last two part
of each judgement's cache key, and ``judge(items, on_done)``: ``items`` are (prompt record,
candidate texts); ``on_done(index, Verdict | SetAside)`` is called once per item, as soon as that
item is decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Verdict:
    scores: list[float]  # one per candidate, in [0, 1]
    details: list[dict]  # one per candidate: ratings, rationale, passed checks, raw reward...
    raw: list[str] = field(default_factory=list)  # the judge's own answers, for audit


@dataclass
class SetAside:
    reason: str
    raw: list[str] = field(default_factory=list)  # whatever the judge answered, kept for the user to read
    retryable: bool = False  # a failed request (try again next run), not an answer that would not parse
