"""Chat-template rendering and tokenization of prompt/answer pairs and of whole conversations.

Pieces are tokenized separately with ``add_special_tokens=False`` so the template's own BOS is
never doubled, and each answer carries the template's end-of-turn text (for ChatML
``<|im_end|>\\n``) so models learn to stop. An assistant turn's text is what the template appends
to the generation prompt before it (rendered with and without the turn), so training sees the
turn exactly where generation would write it; a template that renders a turn differently from
its generation prompt is refused rather than trained on misaligned tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_FIX = "set the chat_template setting to a template that renders each turn the same whatever follows it"


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """The prompt text up to and including the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_answer(tokenizer: PreTrainedTokenizerBase, messages: list[dict], answer: str) -> str:
    """The text the template appends for ``answer``: the answer plus its end-of-turn marker."""
    return _split_turn(tokenizer, messages, answer)[1]


def render_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[tuple[str, bool]]:
    """The conversation's text up to its last assistant turn as consecutive pieces, each with True
    for an assistant turn (its content and end-of-turn marker) and False for the context before
    it (system and user turns, role headers). Each turn is found by rendering the conversation up
    to it, so the generation prompt of a later turn must extend everything rendered before it."""
    pieces: list[tuple[str, bool]] = []
    rendered = ""
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, turn = _split_turn(tokenizer, messages[:j], message["content"])
        if not prompt.startswith(rendered):
            raise ValueError(f"chat template renders the turns before message {j} differently once more turns "
                             f"follow, so assistant turns cannot be trained on where generation writes them; {_FIX}")
        pieces += [(prompt[len(rendered):], False), (turn, True)]
        rendered = prompt + turn
    return pieces


def _split_turn(tokenizer: PreTrainedTokenizerBase, before: list[dict], content: str) -> tuple[str, str]:
    """(the generation prompt after ``before``, the text the template appends to it for an
    assistant turn saying ``content``)."""
    prompt = render_prompt(tokenizer, before)
    full = tokenizer.apply_chat_template(before + [{"role": "assistant", "content": content}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(f"chat template renders the assistant turn differently from its generation prompt; {_FIX}")
    return prompt, full[len(prompt):]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_answers(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], answers: list[str]
) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt and of each answer, untruncated."""
    return _ids(tokenizer, render_prompt(tokenizer, messages)), [_ids(tokenizer, render_answer(tokenizer, messages, a))
                                                                 for a in answers]


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict]
) -> tuple[list[int], list[int], list[bool]]:
    """Token ids of the context before the first assistant turn (the prompt), of everything after
    it up to the end of the last assistant turn (the answer), and the answer's loss mask: True on
    the tokens of assistant turns, False on the later user turns and headers they answer."""
    (first, _), *rest = render_conversation(tokenizer, messages)
    answer_ids: list[int] = []
    loss_mask: list[bool] = []
    for text, is_assistant in rest:
        ids = _ids(tokenizer, text)
        answer_ids += ids
        loss_mask += [is_assistant] * len(ids)
    return _ids(tokenizer, first), answer_ids, loss_mask


def overflow(prompt_ids: list[int], answers: list[list[int]], max_length: int) -> int:
    """Tokens by which the prompt and its longest answer exceed ``max_length`` (<= 0: they fit)."""
    return len(prompt_ids) + max(len(a) for a in answers) - max_length


def truncate(prompt_ids: list[int], answers: list[list[int]], max_length: int) -> tuple[list[int], list[list[int]]]:
    """Fit prompt + longest answer into ``max_length``: the prompt loses tokens from the left (down
    to half the budget), then the answers from the right; all answers keep one shared prompt, as
    prefix sharing needs."""
    over = overflow(prompt_ids, answers, max_length)
    if over <= 0:
        return prompt_ids, answers
    keep_prompt = min(len(prompt_ids), max(len(prompt_ids) - over, max_length // 2))
    prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
    return prompt_ids, [a[: max_length - len(prompt_ids)] for a in answers]


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], answers: list[str], max_length: int
) -> tuple[list[int], list[list[int]]]:
    """Token ids of the prompt and of each answer, truncated to ``max_length`` (see ``truncate``)."""
    return truncate(*tokenize_answers(tokenizer, messages, answers), max_length)
