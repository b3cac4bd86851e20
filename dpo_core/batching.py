"""Batches of prompts with K answers each, and the log-probabilities of the answer tokens.

K = 1 for SFT and 2 for DPO (chosen, rejected). Two things make the forward cheap:

  * prefix sharing (Wang et al. 2024, "Accelerating Direct Preference Optimization with Prefix
    Sharing"): one row holds ``[prompt, answer_1, ..., answer_K]``; each answer restarts its
    position ids where the prompt ends and attends to the prompt and to itself only, through a
    block-causal 4D attention mask, so the prompt is computed once for all K answers with results
    equal to K separate sequences. Without sharing, each answer gets its own ``[prompt, answer]`` row.
  * only answer positions reach the vocabulary projection, in chunks under activation
    checkpointing, so a (rows, length, vocab) logits tensor is never held whole.

Rows are right-padded; padding attends only to itself, so no row is ever fully masked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch.utils.checkpoint import checkpoint

LOGITS_CHUNK_TOKENS = 256  # answer tokens per vocabulary-projection chunk: ~50 MB of fp32 logits at 49k vocab


@dataclass
class Batch:
    input_ids: torch.Tensor  # (R, L) packed rows, right-padded
    position_ids: torch.Tensor  # (R, L) each answer restarts at its prompt's length
    segment_ids: torch.Tensor  # (R, L) 0 prompt, k = 1..K answer k, -1 padding
    answer_ids: torch.Tensor  # (N, A) the answers' tokens, N = prompts * K, answer k of prompt b in row b*K + k-1
    answer_mask: torch.Tensor  # (N, A) True on answer tokens
    predictor_index: torch.Tensor  # (N, A) flat index into (R * L) of the state that predicts each answer token

    @property
    def num_tokens(self) -> int:
        """Tokens of the N full (prompt + answer) sequences the batch stands for."""
        repeats = self.answer_ids.shape[0] // self.input_ids.shape[0]  # K when rows share a prompt, else 1
        return int((self.segment_ids == 0).sum()) * repeats + int(self.answer_mask.sum())


def collate(examples: list[tuple[list[int], list[list[int]]]], pad_id: int, share_prefix: bool = True) -> Batch:
    """Pack (prompt_ids, [answer_ids, ...]) examples, all with the same number of answers K."""
    k = len(examples[0][1])
    if any(len(answers) != k for _, answers in examples):
        raise ValueError("every example in a batch needs the same number of answers")
    rows = [(p, answers) for p, answers in examples] if share_prefix else \
        [(p, [a]) for p, answers in examples for a in answers]
    width = max(len(p) + sum(len(a) for a in answers) for p, answers in rows)
    width_a = max(len(a) for _, answers in examples for a in answers)
    n = len(examples) * k
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    answer_ids = torch.full((n, width_a), pad_id, dtype=torch.long)
    answer_mask = torch.zeros((n, width_a), dtype=torch.bool)
    predictor = torch.zeros((n, width_a), dtype=torch.long)
    answer_row = 0
    for r, (p, answers) in enumerate(rows):
        input_ids[r, : len(p)] = torch.tensor(p)
        position_ids[r, : len(p)] = torch.arange(len(p))
        segment_ids[r, : len(p)] = 0
        start = len(p)
        for seg, a in enumerate(answers, 1):
            input_ids[r, start : start + len(a)] = torch.tensor(a)
            position_ids[r, start : start + len(a)] = torch.arange(len(p), len(p) + len(a))
            segment_ids[r, start : start + len(a)] = seg
            # token 0 of every answer is predicted by the last prompt state; token j by answer token j-1
            cols = torch.cat([torch.tensor([len(p) - 1]), torch.arange(start, start + len(a) - 1)])
            predictor[answer_row, : len(a)] = r * width + cols
            answer_ids[answer_row, : len(a)] = torch.tensor(a)
            answer_mask[answer_row, : len(a)] = True
            answer_row += 1
            start += len(a)
    return Batch(input_ids, position_ids, segment_ids, answer_ids, answer_mask, predictor)


def to_device(batch: Batch, dev: torch.device) -> Batch:
    return Batch(**{f.name: getattr(batch, f.name).to(dev) for f in fields(batch)})


def attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, L, L) additive mask: a query sees earlier keys of the prompt and of its own segment."""
    length = segment_ids.shape[1]
    idx = torch.arange(length, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L): key <= query
    q_seg, k_seg = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = causal & (k_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)  # padding sees itself
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def answer_token_logps(model, batch: Batch, chunk_tokens: int = LOGITS_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the answers (N, A), zero off the answers, in float32; and the mean
    logit of every answer position (N, A), detached, for TRL's ``logits/*`` metrics."""
    decoder, head = _decoder_and_head(model)
    dtype = next(head.parameters()).dtype
    hidden = decoder(
        input_ids=batch.input_ids,
        attention_mask=attention_mask(batch.segment_ids, dtype),
        position_ids=batch.position_ids,
        use_cache=False,
    ).last_hidden_state  # (R, L, H)
    predicting = hidden.reshape(-1, hidden.shape[-1])[batch.predictor_index]  # (N, A, H)
    logps, mean_logits = _chunked_logps(head, predicting, batch.answer_ids, chunk_tokens)
    mask = batch.answer_mask
    return logps * mask, mean_logits * mask


def _decoder_and_head(model):
    """The transformer body and the vocabulary projection (through a PEFT wrapper if present)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _projected_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, chunk, width = hidden.shape
    # 2-D input: a strided 3-D slice would send the projection through a slow batched matmul
    logits = head(hidden.reshape(rows * chunk, width)).float().view(rows, chunk, -1)  # (rows, chunk, V)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return logps, logits.mean(-1).detach()


class _FrozenHeadLogps(torch.autograd.Function):
    """Log-probs through a frozen vocabulary projection, with the gradient computed in forward.

    d log p(y|h) / d h = W[y] - softmax(W h) W, so the (tokens, hidden) gradient is formed while
    the logits exist and only scaled in backward: two vocabulary matmuls instead of the three
    (forward, recompute, backward) that checkpointing needs. Used with LoRA, where W is frozen.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        logits = (hidden @ weight.t()).float()  # (n, V)
        lse = logits.logsumexp(-1, keepdim=True)
        logps = logits.gather(-1, targets[:, None]).squeeze(-1) - lse.squeeze(-1)
        probs = (logits - lse).exp_()
        ctx.save_for_backward((weight[targets].float() - probs @ weight.float()).to(hidden.dtype))
        return logps, logits.mean(-1)

    @staticmethod
    def backward(ctx, grad_logps, grad_mean):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_logps[:, None].to(grad_hidden.dtype), None, None


def _chunked_logps(head, hidden, targets, chunk_tokens):
    step = max(1, chunk_tokens // hidden.shape[0])
    frozen_head = not head.weight.requires_grad and getattr(head, "bias", None) is None
    parts = []
    for s in range(0, hidden.shape[1], step):
        h, t = hidden[:, s : s + step], targets[:, s : s + step]
        if torch.is_grad_enabled() and h.requires_grad and frozen_head:
            rows, chunk, width = h.shape
            logps, mean = _FrozenHeadLogps.apply(h.reshape(rows * chunk, width), head.weight, t.reshape(-1))
            parts.append((logps.view(rows, chunk), mean.detach().view(rows, chunk)))
        elif torch.is_grad_enabled() and h.requires_grad:
            # recompute this chunk's logits in backward instead of keeping them
            parts.append(checkpoint(_projected_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_projected_logps(head, h, t))
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
