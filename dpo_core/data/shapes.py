"""The build stage's data contract: every row shape a team may bring, and the one place each becomes
an internal record of ``dpo_core/common/records.py``.

Prompts -> ``PromptRecord`` (what the policy answers during feedback and evaluation):
  prompt text          {"prompt": "Name three rivers.", "instructions": [{"kind": "lowercase", "args": {}}]}
  prompt messages      {"prompt": [{"role": "user", "content": "Name three rivers."}]}
  messages, user last  {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
  ``instructions`` (optional): ``[{kind, args}]`` checked by the verifiable judge.

SFT conversations -> ``SFTRecord`` (imitated on every assistant turn):
  messages (UltraChat) {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
  ShareGPT             {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}

Preference pairs -> ``PreferencePair`` (``prompt``: the conversation before the answers; ``chosen``
and ``rejected``: one assistant message each):
  TRL standard         {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
  TRL conversational   {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], ...}
  UltraFeedback        {"prompt": "2+2?", "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                        "rejected": [..., {"role": "assistant", "content": "5"}], "score_chosen": 9, "score_rejected": 2}
  Anthropic HH         {"chosen": "\\n\\nHuman: 2+2?\\n\\nAssistant: 4", "rejected": "\\n\\nHuman: 2+2?\\n\\nAssistant: 5"}
  implicit prompt      {"chosen": [{"role": "user", ...}, {"role": "assistant", "content": "4"}], "rejected": [...]}
  Whole conversations in chosen/rejected start with the prompt's turns when a ``prompt`` is given;
  without one, the turns they share are the prompt. They must differ only in the final assistant turn.
  ``score_chosen``/``score_rejected``: optional, both or neither (1.0/0.0 when absent); chosen must
  score higher. ``chosen_model``, ``rejected_model``, ``chosen_rationale``, ``rejected_rationale``,
  ``judge``: optional text, kept.

Every kind:
  ``id`` (or ``prompt_id``) names the row; without one it is named by its file and line.
  A message is ``{"role", "content"}`` or ShareGPT's ``{"from", "value"}``; roles user/human,
  assistant/gpt and system; only role and content are kept.
  Text in HH's "\\n\\nHuman: ...\\n\\nAssistant: ..." format, in ``prompt``, ``chosen`` or
  ``rejected``, is split into its turns.
  CSV cells are text: a cell holding a JSON list of message objects is that list, and
  ``instructions`` are JSON text.

A row's kind is read from its fields (``detect_kind``): ``chosen``/``rejected`` make a pair;
``messages``/``conversations`` make an SFT conversation when the last turn is the assistant's and a
prompt when it is the user's; ``prompt`` alone makes a prompt. An empty value (CSV's empty cell,
Parquet's null) counts as absent.
"""

from __future__ import annotations

import json
import math
import re

from dpo_core.common.records import PreferencePair, PromptRecord, SFTRecord
from dpo_core.data.instructions import validate_instruction

PROMPTS, SFT, PAIRS = "prompts", "sft", "pairs"
KINDS = (PROMPTS, SFT, PAIRS)
KIND_NAMES = {PROMPTS: "prompts", SFT: "SFT conversations", PAIRS: "preference pairs"}

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_PAIR_TEXT_FIELDS = ("chosen_model", "rejected_model", "chosen_rationale", "rejected_rationale", "judge")


class RowError(ValueError):
    """A row that cannot become a record; ``category`` is the rejected-row count it adds to."""

    def __init__(self, message: str, category: str = "invalid"):
        super().__init__(message)
        self.category = category


def detect_kind(row: dict) -> str | None:
    """The kind a row's fields say it is, or None when they do not say (it is then read as its source's kind)."""
    if _has(row, "chosen") or _has(row, "rejected"):
        return PAIRS
    for name in ("messages", "conversations"):
        if _has(row, name):
            turns = _json_list(row[name])
            last = turns[-1] if isinstance(turns, list) and turns else None
            role = _ROLES.get(last.get("role", last.get("from"))) if isinstance(last, dict) else None
            return {"assistant": SFT, "user": PROMPTS}.get(role)
    return PROMPTS if _has(row, "prompt") else None


def to_record(row: dict, kind: str, where: str, default_id: str) -> PromptRecord | SFTRecord | PreferencePair:
    """Convert ``row`` (found at ``where``, "file:line") into the record of ``kind``; RowError says what to fix."""
    return {PROMPTS: _prompt, SFT: _sft, PAIRS: _pair}[kind](row, where, _row_id(row, default_id))


def _prompt(row: dict, where: str, row_id: str) -> PromptRecord:
    if _has(row, "messages") or _has(row, "conversations"):
        messages = _conversation(row, where)
    elif row.get("prompt") is not None:
        messages = _turns(row["prompt"], "prompt", where, "user")
    else:
        fields = sorted(k for k in row if not k.startswith("_"))
        raise RowError(f"{where}: needs a 'prompt' (text or messages), 'messages', 'conversations' or 'chosen' and "
                       f"'rejected' field; it has {fields}. The accepted shapes are listed in dpo_core/data/shapes.py")
    return _build(PromptRecord, where, id=row_id, messages=messages, instructions=_instructions(row, where))


def _sft(row: dict, where: str, row_id: str) -> SFTRecord:
    messages = _conversation(row, where)
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise RowError(f"{where}: assistant turn {i} is empty; fill in the answer or drop the row", "empty_answer")
    return _build(SFTRecord, where, id=row_id, messages=messages)


def _pair(row: dict, where: str, row_id: str) -> PreferencePair:
    for side in ("chosen", "rejected"):
        if row.get(side) is None:
            raise RowError(f"{where}: a preference pair needs both 'chosen' and 'rejected'; field {side!r} is missing")
    prompt = _turns(row["prompt"], "prompt", where, "user") if _has(row, "prompt") else []
    chosen = _after_prompt(prompt, _turns(row["chosen"], "chosen", where, "assistant"), "chosen", where)
    rejected = _after_prompt(prompt, _turns(row["rejected"], "rejected", where, "assistant"), "rejected", where)
    shared = 0  # turns chosen and rejected share before their answers belong to the prompt
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    context = prompt + chosen[:shared]
    answers = {"chosen": chosen[shared:], "rejected": rejected[shared:]}
    for side, turns in answers.items():
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise RowError(f"{where}: field {side!r} must end in one assistant answer after the prompt, and chosen and "
                           f"rejected may differ only there; after the shared turns it has roles {[t['role'] for t in turns]}")
        if not turns[0]["content"].strip():
            raise RowError(f"{where}: field {side!r} has an empty answer; fill it in or drop the row", "empty_answer")
    if not context:
        raise RowError(f"{where}: no prompt: give a 'prompt' field, or whole conversations in 'chosen' and 'rejected' "
                       "that start with the user's turn")
    if _squash(answers["chosen"][0]["content"]) == _squash(answers["rejected"][0]["content"]):
        raise RowError(f"{where}: chosen and rejected are the same answer, which teaches no preference; drop the row",
                       "chosen_equals_rejected")
    score_chosen, score_rejected = _scores(row, where)
    extras = {}
    for name in _PAIR_TEXT_FIELDS:
        if _has(row, name):
            if not isinstance(row[name], str):
                raise RowError(f"{where}: field {name!r} must be text, got {type(row[name]).__name__}")
            extras[name] = row[name]
    return _build(PreferencePair, where, prompt_id=row_id, prompt=context, chosen=answers["chosen"],
                  rejected=answers["rejected"], score_chosen=score_chosen, score_rejected=score_rejected, **extras)


def _scores(row: dict, where: str) -> tuple[float, float]:
    """The pair's scores: both given, or neither (then 1.0 and 0.0: a preference with no strength stated)."""
    given = [name for name in ("score_chosen", "score_rejected") if _has(row, name)]
    if not given:
        return 1.0, 0.0
    if len(given) == 1:
        raise RowError(f"{where}: has {given[0]!r} without the other score; give both score_chosen and score_rejected, "
                       "or neither")
    chosen, rejected = (_number(row, name, where) for name in ("score_chosen", "score_rejected"))
    if chosen == rejected:
        raise RowError(f"{where}: score_chosen equals score_rejected ({chosen:g}), so the row states no preference; "
                       "fix the scores or drop the row", "equal_scores")
    if chosen < rejected:
        raise RowError(f"{where}: score_chosen {chosen:g} is below score_rejected {rejected:g}, so the row prefers the "
                       "rejected answer; swap chosen and rejected or fix the scores")
    return chosen, rejected


def _number(row: dict, name: str, where: str) -> float:
    value = row[name]
    try:
        number = math.nan if isinstance(value, bool) else float(value)  # CSV cells hold numbers as text
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise RowError(f"{where}: field {name!r} is {value!r}, not a finite number; give a number")
    return number


def _conversation(row: dict, where: str) -> list[dict]:
    name = "messages" if _has(row, "messages") else "conversations"
    return _messages(row[name], name, where)


def _after_prompt(prompt: list[dict], turns: list[dict], side: str, where: str) -> list[dict]:
    """``turns`` without the prompt's turns it repeats (UltraFeedback keeps the whole conversation in each side)."""
    if not prompt:
        return turns
    head = turns[: len(prompt)]
    if [(m["role"], m["content"].strip()) for m in head] == [(m["role"], m["content"].strip()) for m in prompt]:
        return turns[len(prompt) :]
    if turns[0]["role"] != "assistant":
        raise RowError(f"{where}: field {side!r} holds a conversation that does not start with the prompt's turns; "
                       "start it with them, or give only the answer")
    return turns


def _turns(value, name: str, where: str, text_role: str) -> list[dict]:
    """Messages from a field holding messages, HH-format text, or plain text (then one ``text_role`` turn)."""
    value = _json_list(value)
    if isinstance(value, list):
        return _messages(value, name, where)
    if not isinstance(value, str):
        raise RowError(f"{where}: field {name!r} must be text or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{where}: field {name!r} is empty; give the {name} text",
                       "empty_answer" if text_role == "assistant" else "invalid")
    turns = _hh_turns(value)
    if turns is None:
        return [{"role": text_role, "content": value}]
    if text_role == "user" and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()  # a prompt in HH's format ends with an empty "Assistant:" awaiting the answer
    return turns


def _hh_turns(text: str) -> list[dict] | None:
    """Anthropic HH's "\\n\\nHuman: ...\\n\\nAssistant: ..." text as turns, or None for other text."""
    body = text.lstrip("\n")
    if not body.startswith("Human:") or "\n\nAssistant:" not in body:
        return None
    parts = _HH_TURN.split(body)[1:]  # speaker, words, speaker, words, ...
    return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
            for who, said in zip(parts[::2], parts[1::2], strict=True)]


def _messages(value, name: str, where: str) -> list[dict]:
    value = _json_list(value)
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}: field {name!r} must be a non-empty list of {{role, content}} messages")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RowError(f"{where}: {name}[{i}] must be a {{role, content}} object, got {type(m).__name__}")
        role, content = (m.get("role"), m.get("content")) if "role" in m else (m.get("from"), m.get("value"))
        if role not in _ROLES:
            raise RowError(f"{where}: {name}[{i}] has role {role!r}; use user, assistant or system "
                           "(ShareGPT: human, gpt, system)")
        if not isinstance(content, str):
            raise RowError(f"{where}: {name}[{i}] content must be text, got {type(content).__name__}")
        messages.append({"role": _ROLES[role], "content": content})
    return messages


def _instructions(row: dict, where: str) -> list[dict]:
    instructions = row.get("instructions") or []
    if isinstance(instructions, str):  # CSV cells hold JSON text
        try:
            instructions = json.loads(instructions)
        except json.JSONDecodeError as e:
            raise RowError(f"{where}: field 'instructions' is not valid JSON ({e.msg}); write it as a JSON list") from e
    if not isinstance(instructions, list):
        raise RowError(f"{where}: field 'instructions' must be a list of {{kind, args}} objects")
    for j, instr in enumerate(instructions):
        try:
            validate_instruction(instr)
        except (ValueError, TypeError) as e:  # TypeError: an unhashable kind
            raise RowError(f"{where}: instructions[{j}]: {e}") from e
    return instructions


def _build(record_type, where: str, **fields):
    """The record, or a RowError naming ``where`` with the record's own complaint."""
    try:
        return record_type(**fields)
    except ValueError as e:
        raise RowError(f"{where}: {e}") from e


def _row_id(row: dict, default: str) -> str:
    return next((str(row[k]) for k in ("id", "prompt_id") if _has(row, k)), default)


def _has(row: dict, name: str) -> bool:
    return row.get(name) not in (None, "")


def _json_list(value):
    """A CSV cell's JSON list of message objects as that list; any other value as it is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded):
            return decoded
    return value


def _squash(text: str) -> str:
    """Text with runs of whitespace made one space: answers that differ only in spacing are the same answer."""
    return " ".join(text.split())
