"""Left-padded batches of (prompt, answer) token ids and the log-probabilities of the answers.

Left padding puts every answer at the right edge, so the logits of the last ``A`` positions
(``A`` = longest answer in the batch) cover all answer tokens: ``logits_to_keep`` then skips the
``[batch, prompt_len, vocab]`` block of logits nobody needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) left-padded prompt + answer
    attention_mask: torch.Tensor  # (B, T)
    answer_mask: torch.Tensor  # (B, A) True on answer tokens among the last A positions

    @property
    def answer_width(self) -> int:
        return self.answer_mask.shape[1]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Stack (prompt_ids, answer_ids) pairs into one left-padded batch."""
    width = max(len(p) + len(a) for p, a in examples)
    answer_width = max(len(a) for _, a in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    answer_mask = torch.zeros((len(examples), answer_width), dtype=torch.bool)
    for i, (p, a) in enumerate(examples):
        seq = p + a
        input_ids[i, width - len(seq) :] = torch.tensor(seq)
        attention_mask[i, width - len(seq) :] = 1
        answer_mask[i, answer_width - len(a) :] = True
    return Batch(input_ids, attention_mask, answer_mask)


def answer_token_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the answer tokens (B, A), zero off the answer, and the mean logit
    over answer positions (B,), computed in float32."""
    a = batch.answer_width
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids,
        logits_to_keep=a + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # (B, A, V): position t predicts token t+1
    targets = batch.input_ids[:, -a:]
    logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = batch.answer_mask
    logps = logps * mask
    mean_logits = (logits.mean(-1) * mask).sum(-1) / mask.sum(-1)
    return logps, mean_logits.detach()
