"""The data contract: every accepted shape becomes its record; every bad row is a RowError naming
the place, the field and the fix, counted under its category."""

from __future__ import annotations

import json

import pytest

from dpo_core.common.records import PreferencePair, PromptRecord, SFTRecord
from dpo_core.data.shapes import PAIRS, PROMPTS, SFT, RowError, detect_kind, to_record


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def _convert(row):
    kind = detect_kind(row)
    return kind, to_record(row, kind, "f.jsonl:7", default_id="f-7")


@pytest.mark.parametrize(("row", "expected"), [
    ({"id": "a", "prompt": "Name three rivers.", "instructions": [{"kind": "lowercase", "args": {}}]},
     PromptRecord("a", [U("Name three rivers.")], [{"kind": "lowercase", "args": {}}])),
    ({"prompt": [S("Be brief."), U("Name three rivers.")]}, PromptRecord("f-7", [S("Be brief."), U("Name three rivers.")])),
    ({"id": 5, "messages": [U("Hi")]}, PromptRecord("5", [U("Hi")])),
    ({"prompt_id": "p", "messages": [S("Be brief."), U("Hi"), A("Hello"), U("Bye?")]},
     PromptRecord("p", [S("Be brief."), U("Hi"), A("Hello"), U("Bye?")])),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, PromptRecord("f-7", [U("Hi")])),
    ({"prompt": "\n\nHuman: Hi\n\nAssistant:"}, PromptRecord("f-7", [U("Hi")])),  # HH text awaiting the answer
    ({"prompt": "Hi", "instructions": '[{"kind": "no_commas", "args": {}}]'},  # a CSV cell
     PromptRecord("f-7", [U("Hi")], [{"kind": "no_commas", "args": {}}])),
    ({"prompt": json.dumps([U("from a CSV cell")])}, PromptRecord("f-7", [U("from a CSV cell")])),
    ({"prompt": "[1, 2] is a list: sort it"}, PromptRecord("f-7", [U("[1, 2] is a list: sort it")])),
], ids=["prompt-text", "prompt-messages", "messages", "multi-turn", "sharegpt-human-last", "hh-prompt", "csv-instructions",
        "csv-messages", "bracket-text"])
def test_prompt_shapes(row, expected):
    assert _convert(row) == (PROMPTS, expected)


@pytest.mark.parametrize(("row", "expected"), [
    ({"id": "c", "prompt": "Hi", "prompt_id": "h", "messages": [U("Hi"), A("Hello!"), U("And?"), A("That's all.")]},
     SFTRecord("c", [U("Hi"), A("Hello!"), U("And?"), A("That's all.")])),  # UltraChat
    ({"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "Hello!"}]},
     SFTRecord("f-7", [S("Be kind."), U("Hi"), A("Hello!")])),  # ShareGPT
    ({"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello!"}]},
     SFTRecord("f-7", [U("Hi"), A("Hello!")])),
    ({"messages": [{"role": "user", "content": "Hi", "name": "x"}, A("Hello!")]}, SFTRecord("f-7", [U("Hi"), A("Hello!")])),
], ids=["ultrachat", "sharegpt", "sharegpt-user-assistant", "extra-keys-dropped"])
def test_sft_shapes(row, expected):
    assert _convert(row) == (SFT, expected)


def _pair(prompt, chosen, rejected, score_chosen=1.0, score_rejected=0.0, prompt_id="f-7", **extra):
    return PreferencePair(prompt_id=prompt_id, prompt=prompt, chosen=[A(chosen)], rejected=[A(rejected)],
                          score_chosen=score_chosen, score_rejected=score_rejected, **extra)


HH_CHOSEN = "\n\nHuman: What is 2+2?\n\nAssistant: Let me think.\n\nHuman: Go on.\n\nAssistant: It is 4."
HH_REJECTED = "\n\nHuman: What is 2+2?\n\nAssistant: Let me think.\n\nHuman: Go on.\n\nAssistant: It is 5."


@pytest.mark.parametrize(("row", "expected"), [
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, _pair([U("2+2?")], "4", "5")),  # TRL standard
    ({"prompt": [S("Be exact."), U("2+2?")], "chosen": [A("4")], "rejected": [A("5")], "chosen_model": "m1"},
     _pair([S("Be exact."), U("2+2?")], "4", "5", chosen_model="m1")),  # TRL conversational
    ({"prompt": "2+2?", "prompt_id": "uf1", "chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")],
      "messages": [U("2+2?"), A("4")], "score_chosen": 9.0, "score_rejected": 2.5},
     _pair([U("2+2?")], "4", "5", 9.0, 2.5, prompt_id="uf1")),  # UltraFeedback-binarized
    ({"chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")]}, _pair([U("2+2?")], "4", "5")),  # no prompt field
    ({"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
     _pair([U("What is 2+2?"), A("Let me think."), U("Go on.")], "It is 4.", "It is 5.")),  # Anthropic HH
    ({"prompt": "\n\nHuman: 2+2?\n\nAssistant:", "chosen": " 4", "rejected": " 5"}, _pair([U("2+2?")], " 4", " 5")),
    ({"prompt": "2+2?", "chosen": [U("2+2?"), A("Hmm."), U("Well?"), A("4")], "rejected": [U("2+2?"), A("Hmm."), U("Well?"),
                                                                                         A("5")]},
     _pair([U("2+2?"), A("Hmm."), U("Well?")], "4", "5")),  # the turns the answers share join the prompt
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": "7", "score_rejected": "3"},
     _pair([U("2+2?")], "4", "5", 7.0, 3.0)),  # CSV cells
    ({"prompt": "2+2?", "chosen": json.dumps([A("4")]), "rejected": json.dumps([A("5")]), "score_chosen": "",
      "score_rejected": ""}, _pair([U("2+2?")], "4", "5")),  # CSV cells: JSON messages, empty scores are absent
], ids=["trl-standard", "trl-conversational", "ultrafeedback", "implicit-prompt", "anthropic-hh", "hh-prompt-field",
        "multi-turn", "csv-scores", "csv-messages"])
def test_pair_shapes(row, expected):
    assert _convert(row) == (PAIRS, expected)


@pytest.mark.parametrize(("row", "kind", "category", "message"), [
    ({"text": "where?"}, PROMPTS, "invalid", "f.jsonl:7: needs a 'prompt' (text or messages), 'messages', 'conversations' "
                                             "or 'chosen' and 'rejected' field; it has ['text']"),
    ({"prompt": "  "}, PROMPTS, "invalid", "f.jsonl:7: field 'prompt' is empty; give the prompt text"),
    ({"prompt": ""}, PROMPTS, "invalid", "f.jsonl:7: field 'prompt' is empty"),
    ({"prompt": 3}, PROMPTS, "invalid", "field 'prompt' must be text or a list of messages, got int"),
    ({"messages": []}, PROMPTS, "invalid", "field 'messages' must be a non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, PROMPTS, "invalid", "messages[0] has role 'tool'; use user, assistant"),
    ({"messages": [{"role": "user", "content": ["part"]}]}, PROMPTS, "invalid", "messages[0] content must be text, got list"),
    ({"messages": ["hi"]}, PROMPTS, "invalid", "messages[0] must be a {role, content} object, got str"),
    ({"messages": [U("hi"), S("sys")]}, PROMPTS, "invalid", "the last message must come from the user"),
    ({"prompt": "x", "instructions": "{not json"}, PROMPTS, "invalid", "field 'instructions' is not valid JSON"),
    ({"prompt": "x", "instructions": {"kind": "lowercase"}}, PROMPTS, "invalid", "must be a list of {kind, args} objects"),
    ({"prompt": "x", "instructions": [{"kind": "rhymes", "args": {}}]}, PROMPTS, "invalid", "instructions[0]: unknown"),
    ({"prompt": "x", "instructions": [{"kind": ["l"], "args": {}}]}, PROMPTS, "invalid", "instructions[0]"),
    ({"messages": [A("no user turn")]}, SFT, "invalid", "needs a user turn before the assistant's"),
    ({"messages": [U("hi"), A("  "), U("more"), A("ok")]}, SFT, "empty_answer", "assistant turn 1 is empty"),
    ({"chosen": "4", "prompt": "2+2?"}, PAIRS, "invalid", "needs both 'chosen' and 'rejected'; field 'rejected' is missing"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "  "}, PAIRS, "empty_answer", "field 'rejected' is empty"),
    ({"prompt": "2+2?", "chosen": [A("")], "rejected": [A("5")]}, PAIRS, "empty_answer", "field 'chosen' has an empty answer"),
    ({"chosen": "\n\nHuman: 2+2?\n\nAssistant:", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}, PAIRS, "empty_answer",
     "field 'chosen' has an empty answer"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": " 4 "}, PAIRS, "chosen_equals_rejected",
     "chosen and rejected are the same answer"),
    ({"chosen": HH_CHOSEN, "rejected": HH_CHOSEN}, PAIRS, "chosen_equals_rejected", "the same answer"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 3, "score_rejected": 3.0}, PAIRS, "equal_scores",
     "f.jsonl:7: score_chosen equals score_rejected (3), so the row states no preference"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 1, "score_rejected": 3}, PAIRS, "invalid",
     "score_chosen 1 is below score_rejected 3, so the row prefers the rejected answer; swap"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 1}, PAIRS, "invalid",
     "has 'score_chosen' without the other score"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": "high", "score_rejected": 1}, PAIRS, "invalid",
     "field 'score_chosen' is 'high', not a finite number"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": True, "score_rejected": 0}, PAIRS, "invalid",
     "field 'score_chosen' is True"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": float("nan"), "score_rejected": 0}, PAIRS, "invalid",
     "not a finite number"),
    ({"chosen": "4", "rejected": "5"}, PAIRS, "invalid", "no prompt: give a 'prompt' field"),
    ({"prompt": "2+2?", "chosen": [U("3+3?"), A("6")], "rejected": [A("5")]}, PAIRS, "invalid",
     "field 'chosen' holds a conversation that does not start with the prompt's turns"),
    ({"chosen": [U("2+2?"), A("4")], "rejected": [U("3+3?"), A("5")]}, PAIRS, "invalid",
     "field 'chosen' must end in one assistant answer after the prompt, and chosen and rejected may differ only there"),
    ({"prompt": "2+2?", "chosen": [A("4"), A("really")], "rejected": [A("5")]}, PAIRS, "invalid", "must end in one assistant"),
    ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "chosen_model": 3}, PAIRS, "invalid",
     "field 'chosen_model' must be text"),
    ({"prompt": "2+2?", "chosen": None, "rejected": "5"}, PAIRS, "invalid", "field 'chosen' is missing"),
    ({"prompt": "2+2?", "chosen": "", "rejected": "5"}, PAIRS, "empty_answer", "field 'chosen' is empty"),
])
def test_bad_rows_say_where_what_and_how_to_fix(row, kind, category, message):
    with pytest.raises(RowError) as caught:
        to_record(row, kind, "f.jsonl:7", default_id="f-7")
    assert caught.value.category == category
    assert message in str(caught.value) and str(caught.value).startswith("f.jsonl:7: ")


@pytest.mark.parametrize(("row", "kind"), [
    ({"prompt": "x"}, PROMPTS),
    ({"prompt": "x", "messages": [U("a"), A("b")]}, SFT),
    ({"messages": json.dumps([U("a"), A("b")])}, SFT),
    ({"conversations": [{"from": "gpt", "value": "b"}]}, SFT),
    ({"chosen": "4", "rejected": None}, PAIRS),
    ({"prompt": "x", "chosen": "", "rejected": None}, PROMPTS),  # empty cells are absent
    ({"messages": []}, None),
    ({"messages": [{"role": "tool", "content": "x"}]}, None),
    ({"messages": [S("only a system turn")]}, None),
    ({"text": "x"}, None),
])
def test_detect_kind(row, kind):
    assert detect_kind(row) == kind
