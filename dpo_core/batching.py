"""Batches of prompts with K answers each, and the log-probabilities of the answer tokens.

Layout: prompts left-padded (B, P), answers right-padded (B*K, A) with the K answers of prompt b
in rows b*K .. b*K+K-1 (K = 1 for SFT, 2 for DPO: chosen then rejected). Prompt and answer meet
at column P for every row, so the answer positions are the same slice for the whole batch.

Two things make the forward cheap (Wang et al. 2024, "Accelerating Direct Preference
Optimization with Prefix Sharing"; and the observation that only answer tokens need logits):
  * prefix sharing: the prompt goes through the model once, its KV cache is repeated for the K
    answers, and only the answers are run on top of it;
  * the vocabulary projection is applied to answer positions only, in chunks, under activation
    checkpointing, so the (rows, length, vocab) logits tensor is never held whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

LOGITS_CHUNK_TOKENS = 1024  # answer tokens per vocabulary-projection chunk: ~200 MB of fp32 logits at 49k vocab


@dataclass
class Batch:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    answer_ids: torch.Tensor  # (B*K, A) right-padded
    answer_mask: torch.Tensor  # (B*K, A) True on answer tokens

    @property
    def answers_per_prompt(self) -> int:
        return self.answer_ids.shape[0] // self.prompt_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens of the K full sequences (prompt + answer) the batch stands for."""
        k = self.answers_per_prompt
        return int(self.prompt_mask.sum()) * k + int(self.answer_mask.sum())


def collate(examples: list[tuple[list[int], list[list[int]]]], pad_id: int) -> Batch:
    """Stack (prompt_ids, [answer_ids, ...]) examples, all with the same number of answers."""
    k = len(examples[0][1])
    if any(len(answers) != k for _, answers in examples):
        raise ValueError("every example in a batch needs the same number of answers")
    width_p = max(len(p) for p, _ in examples)
    width_a = max(len(a) for _, answers in examples for a in answers)
    prompt_ids = torch.full((len(examples), width_p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(examples), width_p), dtype=torch.long)
    answer_ids = torch.full((len(examples) * k, width_a), pad_id, dtype=torch.long)
    answer_mask = torch.zeros((len(examples) * k, width_a), dtype=torch.bool)
    for i, (p, answers) in enumerate(examples):
        prompt_ids[i, width_p - len(p):] = torch.tensor(p)
        prompt_mask[i, width_p - len(p):] = 1
        for j, a in enumerate(answers):
            answer_ids[i * k + j, : len(a)] = torch.tensor(a)
            answer_mask[i * k + j, : len(a)] = True
    return Batch(prompt_ids, prompt_mask, answer_ids, answer_mask)


def answer_token_logps(
    model, batch: Batch, share_prefix: bool = True, chunk_tokens: int = LOGITS_CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the answers (B*K, A), zero off the answers, in float32; and the
    mean logit of every answer position (B*K, A), detached, for TRL's ``logits/*`` metrics."""
    decoder, head = _decoder_and_head(model)
    k = batch.answers_per_prompt
    prompt_mask = batch.prompt_mask
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_len = prompt_mask.sum(-1)
    full_mask = torch.cat([prompt_mask.repeat_interleave(k, 0), batch.answer_mask.long()], dim=1)
    answer_pos = prompt_len.repeat_interleave(k)[:, None] + torch.arange(batch.answer_ids.shape[1])

    if share_prefix and k > 1:
        prompt_out = decoder(input_ids=batch.prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos,
                             use_cache=True)
        cache = prompt_out.past_key_values
        cache.batch_repeat_interleave(k)  # (B, ...) -> (B*K, ...), differentiable
        answer_hidden = decoder(input_ids=batch.answer_ids, attention_mask=full_mask, position_ids=answer_pos,
                                past_key_values=cache, use_cache=True).last_hidden_state
        last_prompt = prompt_out.last_hidden_state[:, -1:].repeat_interleave(k, 0)
    else:
        width_p = batch.prompt_ids.shape[1]
        hidden = decoder(
            input_ids=torch.cat([batch.prompt_ids.repeat_interleave(k, 0), batch.answer_ids], dim=1),
            attention_mask=full_mask,
            position_ids=torch.cat([prompt_pos.repeat_interleave(k, 0), answer_pos], dim=1),
            use_cache=False,
        ).last_hidden_state
        last_prompt, answer_hidden = hidden[:, width_p - 1 : width_p], hidden[:, width_p:]
    # position t predicts token t+1: the last prompt state predicts the first answer token
    predicting = torch.cat([last_prompt, answer_hidden[:, :-1]], dim=1)  # (B*K, A, H)
    logps, mean_logits = _chunked_logps(head, predicting, batch.answer_ids, chunk_tokens)
    mask = batch.answer_mask
    return logps * mask, mean_logits * mask


def _decoder_and_head(model):
    """The transformer body and the vocabulary projection (through a PEFT wrapper if present)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _projected_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()  # (rows, chunk, V)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return logps, logits.mean(-1).detach()


def _chunked_logps(head, hidden, targets, chunk_tokens):
    step = max(1, chunk_tokens // hidden.shape[0])
    parts = []
    for s in range(0, hidden.shape[1], step):
        h, t = hidden[:, s : s + step], targets[:, s : s + step]
        if torch.is_grad_enabled() and h.requires_grad:
            # recompute this chunk's logits in backward instead of keeping them
            parts.append(checkpoint(_projected_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_projected_logps(head, h, t))
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)


def to_device(batch: Batch, dev: torch.device) -> Batch:
    return Batch(*(t.to(dev) for t in (batch.prompt_ids, batch.prompt_mask, batch.answer_ids, batch.answer_mask)))
