"""Batches of prompts with K answers each, and the log-probabilities of the answer tokens.

K = 1 for SFT and 2 for DPO (chosen, rejected). An example may carry a loss mask per answer:
SFT's multi-turn conversations are one prompt (the context before the first assistant turn) and
one answer (everything after it), whose later user turns are context the model reads but never
predicts, so a conversation runs as one sequence and no prefix is repeated per turn. Three things
make the forward cheap:

  * prefix sharing (Wang et al. 2024, "Accelerating Direct Preference Optimization with Prefix
    Sharing"): one row holds ``[prompt, answer_1, ..., answer_K]``; each answer restarts its
    position ids where the prompt ends and attends to the prompt and to itself only, through a
    block-causal 4D attention mask, so the prompt is computed once for all K answers with results
    equal to K separate sequences. Without sharing, each answer gets its own ``[prompt, answer]`` row.
  * no padding in the linear layers: the rows' real tokens are packed into one sequence for
    the projections and MLPs, and spread back into padded rows only inside attention (the
    ``packed_sdpa`` attention backend registered below), so the 10-20% of padding a batch of
    uneven answers carries costs nothing in the matmuls that dominate a step.
  * only the loss mask's answer positions reach the vocabulary projection, in chunks under activation
    checkpointing, so a (rows, length, vocab) logits tensor is never held whole.

Rows are right-padded; padding attends only to itself, so no row is ever fully masked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

LOGITS_CHUNK_TOKENS = 128  # answer tokens per vocabulary-projection chunk: 25 MB of fp32 logits at 49k vocab


@dataclass
class Batch:
    input_ids: torch.Tensor  # (R, L) packed rows, right-padded
    position_ids: torch.Tensor  # (R, L) each answer restarts at its prompt's length
    segment_ids: torch.Tensor  # (R, L) 0 prompt, k = 1..K answer k, -1 padding
    answer_ids: torch.Tensor  # (N, A) the answers' tokens, N = prompts * K, answer k of prompt b in row b*K + k-1
    answer_mask: torch.Tensor  # (N, A) True on answer tokens
    loss_mask: torch.Tensor  # (N, A) True on the answer tokens whose log-probs are wanted (the loss's tokens)
    predictor_index: torch.Tensor  # (N, A) flat index into (R * L) of the state that predicts each answer token
    token_slot: torch.Tensor  # (T,) flat index into (R * L) of every real (non-padding) token, in order
    packed_predictor_index: torch.Tensor  # (N, A) predictor_index as an index into the T packed tokens

    @property
    def num_tokens(self) -> int:
        """Tokens of the N full (prompt + answer) sequences the batch stands for."""
        repeats = self.answer_ids.shape[0] // self.input_ids.shape[0]  # K when rows share a prompt, else 1
        return int((self.segment_ids == 0).sum()) * repeats + int(self.answer_mask.sum())


Example = tuple  # (prompt_ids, [answer_ids, ...]) or (prompt_ids, [answer_ids, ...], [loss_mask, ...]), lists


def collate(examples: list[Example], pad_id: int, share_prefix: bool = True) -> Batch:
    """Pack examples, all with the same number of answers K. An example's optional third element
    holds one boolean list per answer marking its tokens in the loss; without it, all are."""
    k = len(examples[0][1])
    if any(len(e[1]) != k for e in examples):
        raise ValueError("every example in a batch needs the same number of answers")
    rows = [(e[0], e[1]) for e in examples] if share_prefix else [(e[0], [a]) for e in examples for a in e[1]]
    width = max(len(p) + sum(len(a) for a in answers) for p, answers in rows)
    width_a = max(len(a) for e in examples for a in e[1])
    n = len(examples) * k
    masks = [m for e in examples for m in (e[2] if len(e) > 2 else [[True] * len(a) for a in e[1]])]  # answer order
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    answer_ids = torch.full((n, width_a), pad_id, dtype=torch.long)
    answer_mask = torch.zeros((n, width_a), dtype=torch.bool)
    loss_mask = torch.zeros((n, width_a), dtype=torch.bool)
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
            loss_mask[answer_row, : len(a)] = torch.tensor(masks[answer_row], dtype=torch.bool)
            answer_row += 1
            start += len(a)
    token_slot = (segment_ids.view(-1) >= 0).nonzero().squeeze(1)
    packed_position = torch.zeros(segment_ids.numel(), dtype=torch.long)
    packed_position[token_slot] = torch.arange(len(token_slot))
    return Batch(input_ids, position_ids, segment_ids, answer_ids, answer_mask, loss_mask, predictor,
                 token_slot, packed_position[predictor])


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


SHARDED_FORWARD = "answer_token_logps"  # the root forward method a model sharded by sharding.py carries


def answer_token_logps(model, batch: Batch, chunk_tokens: int = LOGITS_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the answers (N, A), zero off the loss mask, in float32; and the mean
    logit of every such position (N, A), detached, for TRL's ``logits/*`` metrics. Only the loss
    mask's tokens reach the vocabulary projection. A model sharded with FSDP2 (``sharding.py``)
    runs this as a forward method of its root, so the root's weights (embeddings, final norm, head)
    are gathered whole around it and their gradients reduce-scattered after backward."""
    sharded_forward = getattr(base_model(model), SHARDED_FORWARD, None)
    if sharded_forward is not None:
        return sharded_forward(batch, chunk_tokens)
    return decoder_and_head_logps(model, batch, chunk_tokens)


def decoder_and_head_logps(model, batch: Batch, chunk_tokens: int = LOGITS_CHUNK_TOKENS):
    """``answer_token_logps`` on the model's own modules: the decoder, then the answer-only head."""
    decoder, head = _decoder_and_head(model)
    dtype = next(head.parameters()).dtype
    mask = attention_mask(batch.segment_ids, dtype)
    if _use_packed_attention(decoder):
        hidden = decoder(
            input_ids=batch.input_ids.view(-1)[batch.token_slot][None],
            attention_mask=mask,
            position_ids=batch.position_ids.view(-1)[batch.token_slot][None],
            use_cache=False,
            token_slot=batch.token_slot,
        ).last_hidden_state[0]  # (T, H)
        predictor = batch.packed_predictor_index
    else:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                         use_cache=False).last_hidden_state  # (R, L, H)
        predictor = batch.predictor_index
    on_answer = batch.loss_mask
    states = hidden.reshape(-1, hidden.shape[-1])[predictor[on_answer]]  # (n, H): answer tokens only
    logps, mean_logits = _chunked_logps(head, states, batch.answer_ids[on_answer], chunk_tokens)
    return (torch.zeros(on_answer.shape, dtype=logps.dtype, device=logps.device).masked_scatter(on_answer, logps),
            torch.zeros(on_answer.shape, dtype=logps.dtype, device=logps.device).masked_scatter(on_answer, mean_logits))


PACKED_ATTENTION = "packed_sdpa"


def _packed_sdpa(module, query, key, value, attention_mask, token_slot=None, **kwargs):
    """PyTorch SDPA over packed tokens: queries, keys and values (1, heads, T, dim) are spread into
    the batch's padded rows (R, heads, L, dim) for attention under the (R, 1, L, L) mask, and the
    output is gathered back to (1, T, heads, dim). Without ``token_slot`` it is plain SDPA, so a
    model switched to this backend generates and evaluates as before."""
    if token_slot is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows, _, length, _ = attention_mask.shape

    def spread(x):
        heads, dim = x.shape[1], x.shape[3]
        full = x.new_zeros(heads, rows * length, dim).index_copy(1, token_slot, x[0])
        return full.view(heads, rows, length, dim).transpose(0, 1)

    out, _ = sdpa_attention_forward(module, spread(query), spread(key), spread(value), attention_mask, **kwargs)
    return out.reshape(rows * length, *out.shape[2:])[token_slot][None], None  # out was (R, L, heads, dim)


AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def _use_packed_attention(decoder) -> bool:
    """Switch a decoder on SDPA to the packed backend (same results, plain SDPA when unpacked);
    models on other backends (eager, flash-attention) keep padded rows."""
    config = decoder.config
    if config._attn_implementation == "sdpa" and getattr(decoder, "_supports_attention_backend", False):
        decoder.set_attn_implementation(PACKED_ATTENTION)
    return config._attn_implementation == PACKED_ATTENTION


def base_model(model):
    """The transformers model, through a PEFT wrapper if present."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _decoder_and_head(model):
    """The transformer body and the vocabulary projection (through a PEFT wrapper if present)."""
    base = base_model(model)
    return base.get_decoder(), base.get_output_embeddings()


class _HeadLogps(torch.autograd.Function):
    """Log-probs of ``targets`` (n,) from final hidden states (n, H) through the vocabulary
    projection ``weight`` (V, H), a chunk of tokens at a time; also each position's mean logit.

    d log p(y|h) / dh = W[y] - softmax(Wh) W and d log p(y|h) / dW = (onehot(y) - softmax(Wh)) h^T.
    A frozen W (LoRA): the (n, H) input gradient is formed in forward while the logits exist and
    only scaled in backward, two vocabulary matmuls in all. A trained W: forward keeps the
    log-sum-exp per token only; backward recomputes each chunk's logits once, turns them into the
    gradient in place and adds into one weight-sized buffer, four matmuls with a single (chunk, V)
    block and a single weight gradient alive, where autograd's checkpointing holds several of each.
    Backward runs under forward's autocast, so the recomputed logits are forward's (bf16 logits
    recomputed in fp32 would not normalise against forward's log-sum-exp).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int):
        train_weight = ctx.needs_input_grad[1]
        logps, means, kept = [], [], []
        for s in range(0, hidden.shape[0], chunk):
            logits, lse, chunk_logps = _project(hidden[s : s + chunk], weight, targets[s : s + chunk])
            logps.append(chunk_logps)
            means.append(logits.mean(-1))
            if train_weight:
                kept.append(lse.squeeze(-1))
            else:
                probs = logits.sub_(lse).exp_()
                kept.append((weight[targets[s : s + chunk]].float() - probs @ weight.float()).to(hidden.dtype))
        ctx.chunk, ctx.train_weight = chunk, train_weight
        dev = hidden.device.type
        ctx.autocast = (dev, torch.get_autocast_dtype(dev), torch.is_autocast_enabled(dev))
        ctx.save_for_backward(hidden, weight, targets, torch.cat(kept))
        return torch.cat(logps), torch.cat(means)

    @staticmethod
    def backward(ctx, grad_logps, grad_means):  # the mean logits are metrics: no gradient flows from them
        hidden, weight, targets, kept = ctx.saved_tensors
        if not ctx.train_weight:
            return kept * grad_logps[:, None].to(kept.dtype), None, None, None
        dev, dtype, enabled = ctx.autocast
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            grad_hidden, grad_weight = _head_grads(hidden, weight, targets, kept, grad_logps, ctx.chunk)
        return grad_hidden, grad_weight, None, None


def _head_grads(hidden, weight, targets, lse, grad_logps, chunk):
    """The trained-weight backward of ``_HeadLogps``: gradients of hidden (n, H) and weight (V, H)."""
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros_like(weight)
    for s in range(0, hidden.shape[0], chunk):
        h, y, g = hidden[s : s + chunk], targets[s : s + chunk], grad_logps[s : s + chunk]
        grad_logits = (h @ weight.t()).float().sub_(lse[s : s + chunk, None]).exp_()  # softmax
        grad_logits[torch.arange(len(y), device=y.device), y] -= 1.0  # softmax - onehot
        grad_logits = grad_logits.mul_(-g[:, None]).to(weight.dtype)  # g * (onehot - softmax)
        grad_hidden[s : s + chunk] = grad_logits @ weight
        grad_weight.addmm_(grad_logits.t(), h)
    return grad_hidden, grad_weight


def _chunked_logps(head, states, targets, chunk_tokens):
    """(n, H) states -> (n,) log-probs of ``targets`` and (n,) mean logits, chunk_tokens at a time."""
    if getattr(head, "bias", None) is not None:
        raise ValueError("vocabulary projections with a bias are not supported")
    if torch.is_grad_enabled() and states.requires_grad:
        logps, means = _HeadLogps.apply(states, head.weight, targets, chunk_tokens)
        return logps, means.detach()
    parts = [_project(states[s : s + chunk_tokens], head.weight, targets[s : s + chunk_tokens])
             for s in range(0, len(states), chunk_tokens)]
    return torch.cat([p[2] for p in parts]), torch.cat([p[0].mean(-1) for p in parts])


def _project(hidden, weight, targets):
    """Logits (n, V) in float32, their log-sum-exp (n, 1), and the log-probs of ``targets`` (n,)."""
    logits = (hidden @ weight.t()).float()
    lse = logits.logsumexp(-1, keepdim=True)
    return logits, lse, logits.gather(-1, targets[:, None]).squeeze(-1) - lse.squeeze(-1)
