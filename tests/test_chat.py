"""Prompt/answer and whole-conversation tokenization with the real SmolLM2 chat template."""

from __future__ import annotations

import pytest

from dpo_core.common.chat import encode, tokenize_answers, tokenize_conversation
from dpo_core.common.models import load_tokenizer

CHAT = [{"role": "user", "content": "Say hi."}]


def test_no_double_bos_and_answer_ends_turn(tiny_model):
    tok = load_tokenizer(tiny_model)
    prompt, (answer,) = encode(tok, CHAT, ["hi"], max_length=512)
    text = tok.decode(prompt + answer)
    assert text.count("<|im_start|>") == 3  # system, user, assistant headers: no extra BOS
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert tok.decode(answer).startswith("hi<|im_end|>")
    assert tok.convert_tokens_to_ids("<|im_end|>") in answer


def test_truncation_keeps_one_prompt_for_all_answers_and_fits(tiny_model):
    tok = load_tokenizer(tiny_model)
    long_prompt = [{"role": "user", "content": "word " * 400}]
    prompt, answers = encode(tok, long_prompt, ["yes " * 100, "no"], max_length=128)
    assert all(len(prompt) + len(a) <= 128 for a in answers)
    assert tok.decode(answers[0]).startswith("yes") and tok.decode(answers[1]).startswith("no<|im_end|>")
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")  # truncated from the left


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye now"},
                {"role": "assistant", "content": "Goodbye."}]


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_conversation_loss_mask_covers_exactly_the_assistant_turns(tiny_model):
    """Hand-written ChatML: the prompt is everything up to the first assistant header; the answer is
    turn 1, the user turn and header between, turn 2; only the turns (with their end-of-turn) are
    in the mask."""
    tok = load_tokenizer(tiny_model)
    prompt, answer, mask = tokenize_conversation(tok, CONVERSATION)
    turn_1, between, turn_2 = (_ids(tok, "Hello!<|im_end|>\n"),
                               _ids(tok, "<|im_start|>user\nBye now<|im_end|>\n<|im_start|>assistant\n"),
                               _ids(tok, "Goodbye.<|im_end|>\n"))
    assert prompt == _ids(tok, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                               "<|im_start|>assistant\n")
    assert answer == turn_1 + between + turn_2
    assert mask == [True] * len(turn_1) + [False] * len(between) + [True] * len(turn_2)


def test_a_one_turn_conversation_encodes_as_a_prompt_and_its_answer(tiny_model):
    tok = load_tokenizer(tiny_model)
    prompt, answer, mask = tokenize_conversation(tok, CONVERSATION[:3])
    assert (prompt, [answer]) == tokenize_answers(tok, CONVERSATION[:2], ["Hello!"]) and all(mask)


TURN_DIFFERS = ("{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
EARLIER_TURNS_DIFFER = (  # drops the content of every assistant turn but the last, as reasoning templates do
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and not loop.last %}...{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize(("template", "problem"), [
    (TURN_DIFFERS, "renders the assistant turn differently from its generation prompt"),
    (EARLIER_TURNS_DIFFER, "renders the turns before message 4 differently once more turns follow"),
])
def test_templates_that_move_a_turn_are_refused_naming_the_setting(tiny_model, template, problem):
    tok = load_tokenizer(tiny_model)
    tok.chat_template = template
    with pytest.raises(ValueError, match=problem) as err:
        tokenize_conversation(tok, CONVERSATION)
    assert "chat_template setting" in str(err.value)
