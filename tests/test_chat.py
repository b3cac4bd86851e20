"""Prompt/answer tokenization with the real SmolLM2 chat template."""

from __future__ import annotations

from dpo_core.common.chat import encode
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
