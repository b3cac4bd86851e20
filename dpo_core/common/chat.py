"""Chat-template rendering and tokenization of prompt/answer pairs.

The prompt and the answer are tokenized separately with ``add_special_tokens=False`` so the
template's own BOS is never doubled, and the answer carries the template's end-of-turn text
(for ChatML ``<|im_end|>\\n``) so models learn to stop.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """The prompt text up to and including the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_answer(tokenizer: PreTrainedTokenizerBase, messages: list[dict], answer: str) -> str:
    """The text the template appends for ``answer``: the answer plus its end-of-turn marker."""
    prompt = render_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("chat template renders the assistant turn differently from its generation prompt")
    return full[len(prompt):]


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], answers: list[str], max_length: int
) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt and of each answer. When prompt + longest answer exceed
    ``max_length``, the prompt loses tokens from the left (down to half the budget), then the
    answers from the right; all answers share one prompt encoding, as prefix sharing needs."""
    prompt_ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer_ids = [tokenizer(render_answer(tokenizer, messages, a), add_special_tokens=False)["input_ids"]
                  for a in answers]
    overflow = len(prompt_ids) + max(len(a) for a in answer_ids) - max_length
    if overflow > 0:
        keep_prompt = min(len(prompt_ids), max(len(prompt_ids) - overflow, max_length // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
        answer_ids = [a[: max_length - len(prompt_ids)] for a in answer_ids]
    return prompt_ids, answer_ids
