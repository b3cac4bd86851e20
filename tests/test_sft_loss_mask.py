"""The assistant-only loss of a multi-turn conversation run as one sequence: against a plain
full-logits forward with transformers' own masked-label loss, as train_sft logs it, and with a
changed user turn."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from dpo_core.common.chat import tokenize_conversation
from dpo_core.common.io import write_jsonl
from dpo_core.common.models import load_model, load_tokenizer
from dpo_core.train.batching import answer_token_logps, collate
from dpo_core.train.config import SFTConfig
from dpo_core.train.sft import train_sft

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye now"},
                {"role": "assistant", "content": "Goodbye, and thanks."}]
ONE_TURN = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]


def _example(tok, messages):
    prompt, answer, mask = tokenize_conversation(tok, messages)
    return prompt, [answer], [mask]


@torch.no_grad()
def _masked_label_loss(model, examples) -> torch.Tensor:
    """transformers' own loss with labels -100 on every prompt, user and header token, as a token
    mean over all examples: n_1 * loss_1 + n_2 * loss_2 over n_1 + n_2, where loss_i is its mean
    over example i's n_i assistant tokens."""
    total, count = 0.0, 0
    for prompt, (answer,), (mask,) in examples:
        labels = [-100] * len(prompt) + [t if m else -100 for t, m in zip(answer, mask, strict=True)]
        loss = model(input_ids=torch.tensor([prompt + answer]), labels=torch.tensor([labels])).loss
        total, count = total + loss * sum(mask), count + sum(mask)
    return total / count


def test_sft_loss_is_the_masked_label_loss_of_a_plain_forward(tiny_model):
    """Our loss, -(sum of log-probs on the mask) / (mask tokens), over a batch of a two-turn and a
    one-turn conversation (so one row is padded), equals transformers' masked-label loss."""
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model).eval()
    examples = [_example(tok, CONVERSATION), _example(tok, ONE_TURN)]
    with torch.no_grad():
        logps, _ = answer_token_logps(model, collate(examples, tok.pad_token_id))
    ours = -logps.sum() / sum(sum(mask) for _, _, (mask,) in examples)
    assert_close(ours, _masked_label_loss(model, examples), rtol=1e-5, atol=1e-6)


def test_the_logged_sft_loss_counts_only_assistant_tokens(tiny_model, tmp_path):
    """train_sft's first step (taken before any update) logs transformers' masked-label loss of
    the model over both conversations: the step's token count holds assistant tokens only."""
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"id": "two", "messages": CONVERSATION},
                                                   {"id": "one", "messages": ONE_TURN}])
    cfg = SFTConfig(sources=["conversations"], lora=False, max_steps=1, batch_size=1, grad_accum=2, precision="fp32")
    train_sft(cfg, tiny_model, tmp_path / "out", conversations_path=chats)
    (step,) = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model).eval()
    expected = _masked_label_loss(model, [_example(tok, CONVERSATION), _example(tok, ONE_TURN)])
    assert step["loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_a_changed_user_turn_is_context_never_predicted(tiny_model):
    """Turn 2 follows a different user question: the same tokens are predicted (the two assistant
    turns), turn 1's log-probs are unchanged (it comes before), turn 2's change (it reads the new
    question)."""
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model).eval()
    changed = CONVERSATION[:3] + [{"role": "user", "content": "What is the capital of France, please?"}] + CONVERSATION[4:]
    batch = collate([_example(tok, CONVERSATION), _example(tok, changed)], tok.pad_token_id)
    with torch.no_grad():
        logps, _ = answer_token_logps(model, batch)
    first, second = (logps[i][batch.loss_mask[i]] for i in (0, 1))
    assert torch.equal(batch.answer_ids[0][batch.loss_mask[0]], batch.answer_ids[1][batch.loss_mask[1]])
    assert batch.answer_mask[1].sum() > batch.answer_mask[0].sum()  # the longer question rides in the answer
    turn_1 = len(tok("Hello!<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert_close(first[:turn_1], second[:turn_1], rtol=1e-5, atol=1e-6)
    assert (first[turn_1:] - second[turn_1:]).abs().max() > 1e-3
    assert (logps[batch.answer_mask & ~batch.loss_mask] == 0).all()  # user tokens never reach the vocabulary
