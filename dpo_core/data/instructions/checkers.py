"""Verifiable-instruction checkers in the style of Google's IFEval.

Each checker is a pure function ``(response, **args) -> bool`` registered in
:data:`CHECKERS` under its instruction kind (the function's name). The
conventions are chosen to be simple, fast and dependency free (IFEval itself
needs nltk):

* a word is a regex match of ``\\b\\w+\\b`` (so "don't" counts as two words);
* a sentence is text ending in ``.``, ``!`` or ``?`` followed by whitespace or
  the end of the response (so "3.5" does not end a sentence), or a trailing
  unterminated run of words;
* keyword matching is case-insensitive and whole-word;
* an empty (whitespace-only) response follows no instruction, as in IFEval.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any, get_type_hints

Instruction = dict  # {"kind": str, "args": dict}
Checker = Callable[..., bool]

CHECKERS: dict[str, Checker] = {}

_WORD = re.compile(r"\b\w+\b")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n|^[ \t]*\*\*\*[ \t]*$", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[*\-•][ \t]+\S", re.MULTILINE)
_NUMBERED_ITEM = re.compile(r"^[ \t]*\d+[.)][ \t]+\S", re.MULTILINE)
_JSON_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)
_TITLE = re.compile(r"<<([^\n]+?)>>")
# *text* or **text**: no space just inside the asterisks, so "* bullet" lines don't count.
_HIGHLIGHT = re.compile(r"(?<!\*)(\*{1,2})[^\s*](?:[^\n*]*[^\s*])?\1(?!\*)")
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]+\]")
_SIX_ASTERISKS = re.compile(r"(?<!\*)\*{6}(?!\*)")
_SECTION_MARK = re.compile(r"\bSECTION\s+\d+")
_DIGIT = re.compile(r"[0-9]")
# Closing quotes, brackets and markdown emphasis may follow a response's final question mark.
_TRAILING_WRAPPERS = "\"'”’»)]*_` \t\n"


def _register(fn: Checker) -> Checker:
    CHECKERS[fn.__name__] = fn
    return fn


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _whole_word(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)


def _count_sentences(text: str) -> int:
    """Number of sentences: pieces between terminal punctuation that contain a word."""
    return sum(1 for piece in _SENTENCE_END.split(text) if _WORD.search(piece))


@_register
def lowercase(response: str) -> bool:
    """No uppercase letters anywhere."""
    return not any(ch.isupper() for ch in response)


@_register
def uppercase(response: str) -> bool:
    """No lowercase letters anywhere (all letters capital)."""
    return not any(ch.islower() for ch in response)


@_register
def max_words(response: str, *, n: int) -> bool:
    """At most n words."""
    return len(_words(response)) <= n


@_register
def min_words(response: str, *, n: int) -> bool:
    """At least n words."""
    return len(_words(response)) >= n


@_register
def max_sentences(response: str, *, n: int) -> bool:
    """At most n sentences."""
    return _count_sentences(response) <= n


@_register
def exact_paragraphs(response: str, *, n: int) -> bool:
    """Exactly n non-empty paragraphs, separated by blank lines or a `***` line."""
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(response) if p.strip()]
    return len(paragraphs) == n


@_register
def bullet_count(response: str, *, n: int) -> bool:
    """Exactly n markdown bullet lines starting with `* `, `- ` or `• `."""
    return len(_BULLET.findall(response)) == n


@_register
def include_keywords(response: str, *, keywords: list[str]) -> bool:
    """Every keyword appears (case-insensitive, whole word)."""
    return all(_whole_word(k).search(response) for k in keywords)


@_register
def forbidden_words(response: str, *, words: list[str]) -> bool:
    """None of the words appears (case-insensitive, whole word)."""
    return not any(_whole_word(w).search(response) for w in words)


@_register
def keyword_frequency(response: str, *, word: str, n: int) -> bool:
    """The word appears at least n times (case-insensitive, whole word)."""
    return len(_whole_word(word).findall(response)) >= n


@_register
def letter_frequency(response: str, *, letter: str, n: int) -> bool:
    """The letter appears at least n times (case-insensitive)."""
    return response.lower().count(letter.lower()) >= n


@_register
def start_with(response: str, *, phrase: str) -> bool:
    """The stripped response starts with the phrase (case-insensitive)."""
    return response.strip().lower().startswith(phrase.strip().lower())


@_register
def end_with(response: str, *, phrase: str) -> bool:
    """The stripped response ends with the phrase, nothing after it (case-insensitive)."""
    return response.strip().lower().endswith(phrase.strip().lower())


@_register
def json_format(response: str) -> bool:
    """The whole response (optionally a ```json fenced block) is a JSON object or array."""
    text = response.strip()
    fenced = _JSON_FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except ValueError:
        return False
    # A bare scalar such as 42 parses, but is not a JSON-formatted answer.
    return isinstance(value, (dict, list))


@_register
def title(response: str) -> bool:
    """Contains a non-empty title wrapped in double angle brackets, <<like this>>."""
    return any(t.strip() for t in _TITLE.findall(response))


@_register
def no_commas(response: str) -> bool:
    """No comma characters."""
    return "," not in response


@_register
def quotation(response: str) -> bool:
    """The whole stripped response is wrapped in straight double quotes."""
    text = response.strip()
    return len(text) >= 2 and text[0] == '"' and text[-1] == '"'


@_register
def postscript(response: str, *, marker: str) -> bool:
    """Some line starts with the marker, e.g. "P.S." (case-insensitive)."""
    return re.search(rf"^\s*{re.escape(marker)}", response, re.IGNORECASE | re.MULTILINE) is not None


@_register
def highlighted_sections(response: str, *, n: int) -> bool:
    """At least n markdown-highlighted spans, *like this* (or **like this**)."""
    return len(_HIGHLIGHT.findall(response)) >= n


@_register
def placeholders(response: str, *, n: int) -> bool:
    """At least n square-bracket placeholders, like [name]."""
    return len(_PLACEHOLDER.findall(response)) >= n


@_register
def numbered_list(response: str, *, n: int) -> bool:
    """Exactly n numbered list lines, `1. ...` or `1) ...`."""
    return len(_NUMBERED_ITEM.findall(response)) == n


@_register
def capital_word_frequency(response: str, *, n: int) -> bool:
    """At most n all-caps words of 2+ letters (so the pronoun "I" does not count)."""
    return sum(1 for w in _words(response) if len(w) >= 2 and w.isupper()) <= n


@_register
def repeat_prompt(response: str, *, text: str) -> bool:
    """The stripped response starts with the text verbatim (case-sensitive)."""
    return response.strip().startswith(text.strip())


@_register
def two_responses(response: str) -> bool:
    """Two different non-empty responses separated by exactly `******`."""
    parts = [p.strip() for p in _SIX_ASTERISKS.split(response)]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


@_register
def sections(response: str, *, n: int) -> bool:
    """Exactly n section markers "SECTION 1", "SECTION 2", ... (uppercase, as asked)."""
    return len(_SECTION_MARK.findall(response)) == n


# --- kinds that occur only in the shipped set's transfer split: does following instructions generalize? ---


@_register
def no_digits(response: str) -> bool:
    """No digit 0-9 anywhere (numbers spelled out in words are fine)."""
    return _DIGIT.search(response) is None


@_register
def end_with_question(response: str) -> bool:
    """The response's last character is "?", closing quotes, brackets or emphasis aside."""
    return response.rstrip(_TRAILING_WRAPPERS).endswith("?")


@_register
def no_exclamation(response: str) -> bool:
    """No exclamation mark, ASCII or full-width."""
    return "!" not in response and "！" not in response


@_register
def min_sentences(response: str, *, n: int) -> bool:
    """At least n sentences, counted as max_sentences counts them."""
    return _count_sentences(response) >= n


@cache
def _arg_types(kind: str) -> dict[str, Any]:
    """Keyword-only parameters of the checker and their types: the args an instruction needs."""
    fn = CHECKERS[kind]
    hints = get_type_hints(fn)
    params = inspect.signature(fn).parameters.values()
    return {p.name: hints[p.name] for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_arg(kind: str, name: str, expected: Any, value: Any) -> None:
    if expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        need = "a non-negative integer"
    elif expected is str:
        ok = isinstance(value, str) and bool(value.strip())
        need = "a non-empty string"
        if name == "letter":
            ok = ok and len(value) == 1 and value.isalpha()
            need = "a single letter"
    else:  # list[str]
        ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)
        need = "a non-empty list of non-empty strings"
    if not ok:
        raise ValueError(f"instruction {kind!r}: arg {name!r} must be {need}, got {value!r}")


def validate_instruction(instr: dict) -> None:
    """Raise ValueError unless instr is {"kind": <known kind>, "args": <exactly its args>}."""
    if not isinstance(instr, dict) or set(instr) != {"kind", "args"}:
        raise ValueError(f"instruction must be a dict with keys 'kind' and 'args', got {instr!r}")
    kind, args = instr["kind"], instr["args"]
    if kind not in CHECKERS:
        raise ValueError(f"unknown instruction kind {kind!r}; known kinds: {', '.join(sorted(CHECKERS))}")
    if not isinstance(args, dict):
        raise ValueError(f"instruction {kind!r}: args must be a dict, got {args!r}")
    expected = _arg_types(kind)
    missing = sorted(expected.keys() - args.keys())
    if missing:
        raise ValueError(f"instruction {kind!r}: missing arg(s) {', '.join(map(repr, missing))}")
    extra = sorted(args.keys() - expected.keys())
    if extra:
        raise ValueError(
            f"instruction {kind!r}: unexpected arg(s) {', '.join(map(repr, extra))}; "
            f"expected {sorted(expected) or 'none'}"
        )
    for name, value in args.items():
        _check_arg(kind, name, expected[name], value)


def _loose_variants(response: str) -> list[str]:
    """IFEval loose mode: drop the first and/or last line (chatty preambles and
    sign-offs), and strip markdown emphasis asterisks from each of those."""
    lines = response.split("\n")
    trimmed = [
        response,
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    ]
    return trimmed + [v.replace("*", "") for v in trimmed]


def check_instructions(response: str, instructions: list[Instruction], loose: bool = False) -> list[bool]:
    """One bool per instruction; loose=True passes an instruction if any loose variant passes."""
    for instr in instructions:
        validate_instruction(instr)
    candidates = _loose_variants(response) if loose else [response]
    candidates = [c for c in candidates if c.strip()]
    return [any(CHECKERS[i["kind"]](c, **i["args"]) for c in candidates) for i in instructions]
