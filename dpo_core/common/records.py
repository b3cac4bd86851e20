"""One record type per stage boundary, validated where it is built.

Files between stages are JSONL with one of these records per line:
  prompts   -> PromptRecord       (build dataset)
  sft       -> SFTRecord          (build dataset: a team's conversations)
  candidates-> JudgedCandidate    (collect feedback)
  pairs     -> PreferencePair     (collect feedback; TRL's conversational preference format)
  eval      -> EvalSample         (evaluate)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
_ROLES = {"system", "user", "assistant"}


def validate_messages(messages, where: str, last_role: str = "user") -> None:
    """Raise ValueError naming ``where`` unless ``messages`` is a chat ending in a ``last_role`` turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list of {{role, content}} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} must be {{'role': one of {sorted(_ROLES)}, 'content': str}}")
        if not m["content"].strip():
            raise ValueError(f"{where}: message {i} ({m['role']}) has empty content")
    if messages[-1]["role"] != last_role:
        raise ValueError(f"{where}: the last message must come from the {last_role}, got {messages[-1]['role']!r}")


@dataclass(frozen=True)
class PromptRecord:
    """A prompt to answer, with the verifiable instructions its answer must follow (may be empty)."""

    id: str
    messages: list[Message]
    instructions: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.id:
            raise ValueError("PromptRecord.id must be non-empty")
        validate_messages(self.messages, f"prompt {self.id}")

    @property
    def text(self) -> str:
        """The last user turn: what dedupe and decontamination compare."""
        return self.messages[-1]["content"]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SFTRecord:
    """A conversation to imitate: SFT trains on every assistant turn of it (assistant-only loss)."""

    id: str
    messages: list[Message]

    def __post_init__(self):
        if not self.id:
            raise ValueError("SFTRecord.id must be non-empty")
        validate_messages(self.messages, f"conversation {self.id}", last_role="assistant")
        if not any(m["role"] == "user" for m in self.messages):
            raise ValueError(f"conversation {self.id}: needs a user turn before the assistant's")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class JudgedCandidate:
    """One sampled answer to a prompt with the judge's score in [0, 1]."""

    prompt_id: str
    index: int
    model: str  # the generator that wrote it
    text: str
    n_tokens: int
    score: float
    passed: list[bool] = field(default_factory=list)  # per instruction, from the verifiable judge
    details: dict = field(default_factory=dict)  # the judge's ratings, rationale or raw reward
    judge: str = ""  # judge name and prompt version

    def __post_init__(self):
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"candidate {self.prompt_id}/{self.index}: score {self.score} outside [0, 1]")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreferencePair:
    """TRL's conversational preference record plus the scores that produced it."""

    prompt_id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    score_chosen: float
    score_rejected: float
    chosen_model: str = ""
    rejected_model: str = ""
    chosen_rationale: str = ""
    rejected_rationale: str = ""
    judge: str = ""  # judge name and prompt version

    def __post_init__(self):
        validate_messages(self.prompt, f"pair {self.prompt_id}")
        for side in ("chosen", "rejected"):
            turns = getattr(self, side)
            if len(turns) != 1 or turns[0].get("role") != "assistant":
                raise ValueError(f"pair {self.prompt_id}: {side} must be one assistant message")
        if self.score_chosen <= self.score_rejected:
            raise ValueError(
                f"pair {self.prompt_id}: score_chosen {self.score_chosen} must exceed "
                f"score_rejected {self.score_rejected}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EvalSample:
    """One model's answer to one held-out prompt, which of its instructions the answer followed (none
    for a prompt without instructions) and its other per-prompt scores by metric name (judge/rating,
    reward/score, the DPO model's pairwise/win_rate_vs_base...; None where the judge gave no readable
    answer). The verifiable scores are not repeated in ``scores``: they derive from the flags
    (dpo_core.evaluate.gate.per_prompt_scores)."""

    model: str
    prompt_id: str
    prompt: str
    response: str
    passed_strict: list[bool]
    passed_loose: list[bool]
    scores: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.passed_strict) != len(self.passed_loose):
            raise ValueError(f"eval sample {self.model}/{self.prompt_id}: {len(self.passed_strict)} strict and "
                             f"{len(self.passed_loose)} loose flags; need one of each per instruction")
        bad = {k: v for k, v in self.scores.items() if not (v is None or isinstance(v, int | float))}
        if bad:
            raise ValueError(f"eval sample {self.model}/{self.prompt_id}: scores must be numbers or None, got {bad}")

    @property
    def prompt_pass(self) -> bool | None:
        """Every instruction followed (strictly); None for a prompt without instructions."""
        return all(self.passed_strict) if self.passed_strict else None

    def to_dict(self) -> dict:
        return asdict(self) | {"prompt_pass": self.prompt_pass}

    @classmethod
    def from_dict(cls, row: dict) -> EvalSample:
        """A ``samples.jsonl`` line back: ``prompt_pass`` is derived, so it is dropped, not stored."""
        return cls(**{k: v for k, v in row.items() if k != "prompt_pass"})
