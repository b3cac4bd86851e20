"""Checkers on hand-made responses, loose mode, validation errors, and the shipped prompt set."""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dpo_core.data.instructions import (
    CHECKERS,
    INSTRUCTION_SET_PATH,
    check_instructions,
    load_instruction_set,
    validate_instruction,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen() -> Iterator[ModuleType]:
    """The generator script, imported by path (scripts/ is not a package)."""
    name = "make_instruction_set"
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


# kind -> (args, a response that follows it, a response that does not)
CASES: dict[str, tuple[dict, str, str]] = {
    "lowercase": ({}, "all quiet here, 42 times.", "All quiet here."),
    "uppercase": ({}, "LOUD AND CLEAR, 42 TIMES!", "LOUD and CLEAR"),
    "max_words": ({"n": 5}, "one two three four five", "one two three four five six"),
    "min_words": ({"n": 4}, "don't stop now", "just three words"),
    "max_sentences": ({"n": 2}, "It costs 3.5 dollars. Really!", "One. Two! Three?"),
    "exact_paragraphs": ({"n": 3}, "First.\n\nSecond.\n***\nThird.", "First.\n\nSecond."),
    "bullet_count": ({"n": 2}, "Intro *bold*\n* one\n- two\n***", "* one\n* two\n* three"),
    "include_keywords": ({"keywords": ["Tide", "salt"]}, "The tide brings SALT.", "The tides bring salt."),
    "forbidden_words": ({"words": ["sea"]}, "Seashells by the shore.", "The Sea is calm."),
    "keyword_frequency": ({"word": "rain", "n": 2}, "Rain, rain, go away.", "Rain and rainbows."),
    "letter_frequency": ({"letter": "z", "n": 3}, "Zany zebras zoom.", "Zany zebras."),
    "start_with": ({"phrase": "Dear friend"}, "  dear Friend, hello.", "Hello, dear friend."),
    "end_with": ({"phrase": "That is all."}, "Done. That is all.  ", "That is all. Bye."),
    "json_format": ({}, '```json\n{"answer": [1, 2]}\n```', "answer: 1, 2"),
    "title": ({}, "<<Ode to Rain>>\nDrip drop.", "<< >> Drip drop."),
    "no_commas": ({}, "No commas here.", "Yes, one comma."),
    "quotation": ({}, ' "Quoted whole." ', '"Quoted" only partly.'),
    "postscript": ({"marker": "P.S."}, "Hi.\n  p.s. see you soon", "Hi. P.S. inline does not count."),
    "highlighted_sections": ({"n": 2}, "A *first* and **second** part.", "* bullet *\nonly *one* here"),
    "placeholders": ({"n": 2}, "Dear [name], at [address].", "Dear [name], at [].\n"),
    "numbered_list": ({"n": 3}, "1. a\n2. b\n  3. c", "1. a\n2. b\n3.no space"),
    "capital_word_frequency": ({"n": 1}, "I think NASA is great.", "NASA and ESA rock."),
    "repeat_prompt": ({"text": "Write a poem."}, "Write a poem. Roses are red.", "write a poem. Roses."),
    "two_responses": ({}, "First take.\n******\nSecond take.", "Same.\n*******\nOther."),
    "sections": ({"n": 2}, "SECTION 1\nIntro.\nSECTION 2\nEnd.", "Section 1\nIntro.\nSECTION 2\nEnd."),
    # the transfer split's own kinds
    "no_digits": ({}, "Twenty-one owls, give or take.", "About 21 owls."),
    "end_with_question": ({}, "Owls hunt at night. Have you seen one?", "Have you seen one? Owls hunt at night."),
    "no_exclamation": ({}, "Calm and quiet.", "Wow! Owls."),
    "min_sentences": ({"n": 3}, "One. Two! Three?", "It costs 3.5 dollars. Really!"),
}

# kind -> (args, responses that follow it in a form a model may well write): strict about the rule,
# tolerant of formatting details
TOLERATED: dict[str, tuple[dict, list[str]]] = {
    "bullet_count": ({"n": 2}, ["• one\n• two", "- one\n* two"]),
    "numbered_list": ({"n": 2}, ["1) a\n2) b"]),
    "include_keywords": ({"keywords": ["mist"]}, ["MIST over the harbor."]),
    "no_digits": ({}, ["Two hundred and six bones, no numerals."]),
    "end_with_question": ({}, ['"Is that so?"', "Ready to try?**", "Who knows? (Do you?)\n"]),
    "no_exclamation": ({}, ["Is 2 > 1? Yes."]),
    "min_sentences": ({"n": 3}, ["First line.\nSecond one?\nThird, without a stop"]),
}


def _instr(kind: str, **args: object) -> dict:
    return {"kind": kind, "args": args}


def test_every_kind_is_documented_and_there_are_enough() -> None:
    assert len(CHECKERS) >= 22
    for kind, fn in CHECKERS.items():
        assert fn.__doc__ and "\n" not in fn.__doc__.strip(), kind


def test_cases_cover_every_kind() -> None:
    assert set(CASES) == set(CHECKERS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_checker_pass_and_fail(kind: str) -> None:
    args, good, bad = CASES[kind]
    assert check_instructions(good, [_instr(kind, **args)]) == [True]
    assert check_instructions(bad, [_instr(kind, **args)]) == [False]


@pytest.mark.parametrize("kind", sorted(TOLERATED))
def test_checkers_tolerate_format_details(kind: str) -> None:
    args, responses = TOLERATED[kind]
    for response in responses:
        assert check_instructions(response, [_instr(kind, **args)]) == [True], response


def test_new_kinds_stay_strict() -> None:
    assert not CHECKERS["no_digits"]("Chapter 1")
    assert not CHECKERS["end_with_question"]("Why? Because.")
    assert not CHECKERS["no_exclamation"]("Hello！")  # full-width
    assert not CHECKERS["min_sentences"]("Version 3.5 is one sentence.", n=2)  # "3.5" ends no sentence


def test_one_result_per_instruction_in_order() -> None:
    instructions = [_instr("lowercase"), _instr("no_commas"), _instr("max_words", n=2)]
    assert check_instructions("hello, world", instructions) == [True, False, True]


def test_empty_response_follows_nothing() -> None:
    # As in IFEval: otherwise "" would satisfy no_commas, max_words, lowercase...
    instructions = [_instr("no_commas"), _instr("max_words", n=5), _instr("lowercase")]
    assert check_instructions("  \n ", instructions) == [False, False, False]
    assert check_instructions("  \n ", instructions, loose=True) == [False, False, False]


def test_json_accepts_bare_and_rejects_scalars_and_prose() -> None:
    assert CHECKERS["json_format"]('[{"a": 1}]')
    assert CHECKERS["json_format"]('```JSON\n{"a": 1}\n```')
    assert not CHECKERS["json_format"]("42")
    assert not CHECKERS["json_format"]('Here is the JSON: {"a": 1}')


def test_loose_drops_a_preamble_line() -> None:
    instr = [_instr("start_with", phrase="Roses are red")]
    response = "Sure, here it is:\nRoses are red,\nviolets are blue."
    assert check_instructions(response, instr) == [False]
    assert check_instructions(response, instr, loose=True) == [True]


def test_loose_drops_a_sign_off_line() -> None:
    instr = [_instr("end_with", phrase="That is all.")]
    response = "Facts about owls. That is all.\nLet me know if you need more!"
    assert check_instructions(response, instr) == [False]
    assert check_instructions(response, instr, loose=True) == [True]


def test_loose_strips_emphasis_asterisks() -> None:
    instr = [_instr("start_with", phrase="Dear Sam"), _instr("end_with", phrase="the end")]
    response = "**Dear Sam**, this is *the end*"
    assert check_instructions(response, instr) == [False, False]
    assert check_instructions(response, instr, loose=True) == [True, True]


def test_loose_still_fails_a_real_violation() -> None:
    instr = [_instr("no_commas")]
    response = "Intro line\nA, B and C\nOutro line"
    assert check_instructions(response, instr, loose=True) == [False]


def test_unknown_kind_names_it_and_lists_known_kinds() -> None:
    with pytest.raises(ValueError, match="unknown instruction kind 'shout'") as err:
        check_instructions("hi", [_instr("shout")])
    assert "lowercase" in str(err.value) and "two_responses" in str(err.value)


@pytest.mark.parametrize(
    ("instr", "message"),
    [
        (_instr("max_words"), r"'max_words': missing arg\(s\) 'n'"),
        (_instr("lowercase", n=3), r"'lowercase': unexpected arg\(s\) 'n'"),
        (
            _instr("keyword_frequency", word="x", n=2, extra=1),
            r"'keyword_frequency': unexpected arg\(s\) 'extra'",
        ),
        (_instr("max_words", n="5"), r"'max_words': arg 'n' must be a non-negative integer"),
        (_instr("max_words", n=True), r"'max_words': arg 'n' must be a non-negative integer"),
        (
            _instr("letter_frequency", letter="ab", n=2),
            r"'letter_frequency': arg 'letter' must be a single letter",
        ),
        (
            _instr("include_keywords", keywords=[]),
            r"'include_keywords': arg 'keywords' must be a non-empty list",
        ),
        (_instr("start_with", phrase="  "), r"'start_with': arg 'phrase' must be a non-empty string"),
        ({"kind": "lowercase"}, r"keys 'kind' and 'args'"),
    ],
)
def test_bad_instructions_are_rejected_clearly(instr: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_instruction(instr)
    with pytest.raises(ValueError, match=message):
        check_instructions("hello", [instr])


def test_loader_reports_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "p", "instructions": [{"kind": "nope", "args": {}}], "split": "train"}\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:1: unknown instruction kind 'nope'"):
        load_instruction_set(path)


# --- the shipped prompt set -------------------------------------------------


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_instruction_set()


def test_shipped_set_sizes_and_ids(rows: list[dict]) -> None:
    assert len(rows) == 540
    assert Counter(r["split"] for r in rows) == {"train": 340, "eval": 80, "transfer": 120}
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(re.fullmatch(r"ifx-\d{4}", r["id"]) for r in rows)
    assert len(load_instruction_set(split="eval")) == 80
    assert len(load_instruction_set(split="transfer")) == 120


def test_shipped_instructions_validate(rows: list[dict]) -> None:
    for row in rows:
        assert 1 <= len(row["instructions"]) <= 3, row["id"]
        for instr in row["instructions"]:
            validate_instruction(instr)


def _usage(rows: list[dict], split: str) -> Counter[str]:
    return Counter(i["kind"] for r in rows if r["split"] == split for i in r["instructions"])


def test_every_kind_appears_at_least_five_times_per_split(rows: list[dict], gen: ModuleType) -> None:
    seen = set(CHECKERS) - gen.TRANSFER_KINDS
    for split in ("train", "eval"):
        usage = _usage(rows, split)
        assert {k: usage[k] for k in seen if usage[k] < 5} == {}, split


def test_transfer_only_kinds_occur_only_in_transfer_and_often(rows: list[dict], gen: ModuleType) -> None:
    assert len(gen.TRANSFER_KINDS) >= 3 and gen.TRANSFER_KINDS <= set(CHECKERS)
    for split in ("train", "eval"):
        assert not gen.TRANSFER_KINDS & set(_usage(rows, split)), split
    usage = _usage(rows, "transfer")
    assert {k: usage[k] for k in gen.TRANSFER_KINDS if usage[k] < 10} == {}
    assert len(set(usage) - gen.TRANSFER_KINDS) >= 20  # most rows test known kinds in new words


def test_training_phrasings_are_varied(gen: ModuleType) -> None:
    assert set(gen.PHRASINGS) == set(CHECKERS) - gen.TRANSFER_KINDS
    assert all(len(p) >= 4 for p in gen.PHRASINGS.values())
    assert len(gen.TRAIN_TASKS) >= 40 and len(gen.TRAIN_TOPICS) >= 55


def _matches(template: str, prompt: str, gen: ModuleType) -> bool:
    return gen._template_pattern(template).search(prompt) is not None


def test_transfer_phrasings_never_appear_in_train_or_eval(rows: list[dict], gen: ModuleType) -> None:
    train_templates = {t for p in gen.PHRASINGS.values() for t in p}
    transfer_templates = {t for p in gen.TRANSFER_PHRASINGS.values() for t in p}
    assert not train_templates & transfer_templates
    seen = [r["prompt"] for r in rows if r["split"] != "transfer"]
    for template in transfer_templates:
        assert not any(_matches(template, p, gen) for p in seen), template
    # and the check is not vacuous: the transfer prompts do use those sentences, not train's
    transfer = [r["prompt"] for r in rows if r["split"] == "transfer"]
    assert all(any(_matches(t, p, gen) for t in transfer_templates) for p in transfer)
    assert not any(_matches(t, p, gen) for t in train_templates for p in transfer)


def test_eval_uses_training_phrasings(rows: list[dict], gen: ModuleType) -> None:
    templates = [t for p in gen.PHRASINGS.values() for t in p]
    assert all(any(_matches(t, r["prompt"], gen) for t in templates) for r in rows if r["split"] == "eval")


def test_instruction_count_mix(rows: list[dict]) -> None:
    mix = Counter(len(r["instructions"]) for r in rows)
    assert mix[1] / len(rows) == pytest.approx(0.4, abs=0.05)
    assert mix[2] / len(rows) == pytest.approx(0.4, abs=0.05)
    assert mix[3] / len(rows) == pytest.approx(0.2, abs=0.05)


def test_splits_share_no_prompt_text_or_topic(rows: list[dict], gen: ModuleType) -> None:
    splits = ("train", "eval", "transfer")
    prompts = {s: [r["prompt"] for r in rows if r["split"] == s] for s in splits}
    topics = {"train": gen.TRAIN_TOPICS, "eval": gen.EVAL_TOPICS, "transfer": gen.TRANSFER_TOPICS}
    tasks = {"train": gen.TRAIN_TASKS, "eval": gen.EVAL_TASKS, "transfer": gen.TRANSFER_TASKS}
    for split, other in itertools.permutations(splits, 2):
        assert not set(prompts[split]) & set(prompts[other])
        assert not set(topics[split]) & set(topics[other]) and not set(tasks[split]) & set(tasks[other])
        for topic in topics[other]:
            pattern = re.compile(rf"\b{re.escape(topic)}\b", re.IGNORECASE)
            assert not any(pattern.search(p) for p in prompts[split]), (split, topic)


def test_shipped_rows_avoid_contradictory_combos(rows: list[dict], gen: ModuleType) -> None:
    for row in rows:
        kinds = [i["kind"] for i in row["instructions"]]
        assert len(set(kinds)) == len(kinds), row["id"]
        for i, a in enumerate(kinds):
            for b in kinds[i + 1 :]:
                assert gen.compatible(a, b), (row["id"], a, b)


def test_prompts_state_their_args(rows: list[dict]) -> None:
    for row in rows:
        for instr in row["instructions"]:
            for value in instr["args"].values():
                values = value if isinstance(value, list) else [value]
                assert all(str(v) in row["prompt"] for v in values), (row["id"], instr)


def test_generator_is_deterministic_and_matches_shipped_file(tmp_path: Path, gen: ModuleType) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    gen.main(["--out", str(first)])
    gen.main(["--out", str(second)])
    assert first.read_bytes() == second.read_bytes() == INSTRUCTION_SET_PATH.read_bytes()
