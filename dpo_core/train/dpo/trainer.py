"""Stage 4, DPO: train the policy on preference pairs against a frozen reference.

Lifecycle: ``setup`` (model, reference, tokenized pairs) -> reference log-probs (once, cached on
disk) -> ``fit`` (the shared loop: accumulation, schedule, eval, checkpoints, resume) -> save.

The reference is the starting policy, or ``reference_model`` (iterative DPO's pi_0, say, while round
r starts from pi_{r-1}). With ``precompute_reference`` (default) its log-probs over all pairs are
computed once before training and cached on disk under its fingerprint: the starting policy computes
them itself (before its first step it is the reference: a fresh LoRA adapter adds zero); a
``reference_model`` is loaded, run and freed before the policy loads, so one model is in memory at a
time. Otherwise the reference runs every step: the policy with its LoRA adapter disabled when the
reference is the starting policy, else a frozen copy. Either way it runs in the training's precision
(bf16 autocast or fp32), so the two modes give the same log-probs. TR-DPO (``sync_ref_model``) runs
a frozen full copy every step and moves it towards the policy every ``ref_model_sync_steps`` steps;
the copy is saved with each checkpoint.

Two loss modifiers read more than summed log-probs. LD-DPO (``ld_alpha``) splits each answer at its
pair's shorter length: the policy and a per-step reference from their per-token log-probs, a
precomputed reference from a second cached table over the answers cut to that length. WPO
(``use_weighting``) reads each answer token's log sum_v p(v)^2 under the policy, projected from the
decoder states of the same forward (``decoder_states``), with no second pass through the decoder.

Under FSDP (``sharding="fsdp"``) the precomputed pass runs on a sharded model, not on one before
sharding: an unsharded pass would need the whole model on every device, which is what sharding
avoids; the sharded policy before its first step computes exactly the reference's log-probs, and a
``reference_model`` is sharded for its pass as the policy is. A per-step frozen copy is sharded the
same way.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dpo_core.common.chat import overflow, tokenize_answers, truncate
from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.models import cache_dir, load_model, load_tokenizer, model_fingerprint, resolve_model
from dpo_core.common.records import PreferencePair
from dpo_core.train import distributed, sharding
from dpo_core.train.batching import LOGITS_CHUNK_TOKENS, Batch, answer_token_logps, base_model, collate, to_device
from dpo_core.train.config import DPOConfig
from dpo_core.train.dpo.losses import LossSettings, PairLogps, combined_loss
from dpo_core.train.dpo.reference import (
    cache_path,
    compute_reference_logps,
    load_or_compute,
    pair_logps,
    reference_key,
    soft_update,
)
from dpo_core.train.loop import (
    Totals,
    TrainResult,
    autocast,
    device,
    fit,
    load_device,
    prepare_for_training,
    resolved_precision,
    save_trained,
)


@dataclass
class PairBatch:
    batch: Batch  # 2 answers per prompt: rows 2i (chosen) and 2i+1 (rejected)
    ref: torch.Tensor  # (B, 2) reference log-probs of [chosen, rejected]; zeros when not precomputed

    def to(self, dev):
        return PairBatch(to_device(self.batch, dev), self.ref.to(dev))


def read_pairs(pairs_paths: Sequence[Path]) -> list[PreferencePair]:
    """The pairs of every file, in order (a team's own pairs beside the collected ones, say)."""
    if isinstance(pairs_paths, str | Path):
        raise TypeError(f"pairs_paths is a list of pair files, got the single path {pairs_paths!r}: wrap it in a list")
    per_file = {str(path): [PreferencePair(**r) for r in read_jsonl(path)] for path in pairs_paths}
    pairs = [pair for file_pairs in per_file.values() for pair in file_pairs]
    if not pairs:
        held = ", ".join(f"{path}: 0" for path in per_file) or "no files given"
        raise ValueError(f"no preference pairs ({held}): collect feedback on more prompts or pass a team's pair file")
    return pairs


def train_dpo(
    cfg: DPOConfig, model_ref: str, pairs_paths: Sequence[Path], out_dir: Path,
    on_step: Callable[[int, int, dict], None] | None = None, reference_model: str | None = None,
) -> TrainResult:
    """Train ``model_ref`` on the pairs of every file in ``pairs_paths`` against ``reference_model``
    (default: ``model_ref`` itself, the starting policy)."""
    pairs = read_pairs(pairs_paths)
    path = resolve_model(model_ref)
    ref_path = path if reference_model is None else resolve_model(reference_model)
    tokenizer = load_tokenizer(path)
    if reference_model is not None:
        require_same_vocabulary(tokenizer, ref_path)
    tokens = [tokenize_answers(tokenizer, p.prompt, [p.chosen[0]["content"], p.rejected[0]["content"]]) for p in pairs]
    truncated_pairs = sum(overflow(prompt, answers, cfg.max_length) > 0 for prompt, answers in tokens)
    examples = [truncate(prompt, answers, cfg.max_length) for prompt, answers in tokens]

    def precomputed(model: Callable[[], torch.nn.Module], disable_adapter: bool) -> tuple[torch.Tensor, bool, float]:
        """The reference's log-probs from the cache, else from ``model()`` (called once at most); whether
        cached; seconds taken. With ld_alpha, LD-DPO's weighting of them, from a second table over the
        answers cut to their pair's shared length (``shared_part``): by causality its sums are the
        log-probs of exactly the shared tokens, so the cached table needs no per-token split."""
        started = time.perf_counter()
        loaded, fingerprint = functools.cache(model), model_fingerprint(ref_path)  # the digest reads the weights

        def table(ex) -> tuple[torch.Tensor, bool]:
            key = reference_key(fingerprint, ex, resolved_precision(cfg))
            with autocast(cfg):  # the precision training runs in, as a per-step reference runs inside fit's autocast
                return load_or_compute(cache_path(cache_dir(), key), lambda: compute_reference_logps(
                    loaded(), ex, tokenizer.pad_token_id, cfg.batch_size, cfg.share_prefix, disable_adapter))

        logps, reused = table(examples)
        if cfg.ld_alpha is not None:
            shared, shared_reused = table(shared_part(examples))
            logps, reused = shared + cfg.ld_alpha * (logps - shared), reused and shared_reused
        return logps, reused, time.perf_counter() - started

    precompute = cfg.needs_reference and cfg.precompute_reference
    ref_logps, reused, reference_runtime = torch.zeros(len(examples), 2), False, 0.0
    if precompute and reference_model is not None:  # loaded (unless cached), run and freed before the policy loads
        ref_logps, reused, reference_runtime = precomputed(lambda: frozen_copy(ref_path, cfg), disable_adapter=False)
        gc.collect()  # the copy went with the call, unless reference cycles (a sharded copy's hooks) hold it
    torch.manual_seed(cfg.seed)  # the LoRA init and dropout draw from here, whichever reference ran before
    policy = prepare_for_training(load_model(path, device=load_device(cfg)), cfg)
    if precompute and reference_model is None:
        # Before the first step the policy *is* the reference (a fresh LoRA adapter adds zero), so
        # precomputed reference log-probs need no second copy of the weights.
        ref_logps, reused, reference_runtime = precomputed(lambda: policy, disable_adapter=cfg.lora)
    if precompute and distributed.is_main():
        print(f"reference log-probs: {'reused from disk' if reused else 'computed'} in {reference_runtime:.1f}s",
              flush=True)

    # A per-step reference: the adapter-disabled policy while the reference is the unmoving starting
    # policy of a LoRA run, else a frozen copy (TR-DPO's moves, so it is a full copy even with LoRA).
    ref_model = None
    if cfg.needs_reference and not cfg.precompute_reference:
        adapter_off = cfg.lora and reference_model is None and not cfg.sync_ref_model
        ref_model = policy if adapter_off else frozen_copy(ref_path, cfg)

    order = list(range(len(pairs)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = round(len(order) * cfg.eval_fraction)
    eval_set = [(examples[i], ref_logps[i]) for i in order[:n_eval]]
    train_set = [(examples[i], ref_logps[i]) for i in order[n_eval:]]
    if eval_set and distributed.is_main():  # kept for the evaluation stage: held-out preference accuracy and perplexity
        write_jsonl(Path(out_dir) / "eval_pairs.jsonl", (pairs[i].to_dict() for i in order[:n_eval]))
    settings = loss_settings(cfg)

    def make_batch(items) -> PairBatch:
        batch = collate([e for e, _ in items], tokenizer.pad_token_id, cfg.share_prefix)
        return PairBatch(batch, torch.stack([r for _, r in items])).to(device())

    def step_loss(pb: PairBatch, totals: Totals):
        with decoder_states(policy) if cfg.use_weighting else contextlib.nullcontext([]) as states:
            logps, mean_logits = answer_token_logps(policy, pb.batch)
        log_sum_sq = log_sum_sq_probs(policy, pb.batch, states[-1]) if cfg.use_weighting else None
        ref = pb.ref
        if cfg.needs_reference and not cfg.precompute_reference:
            ref = reference_pair_logps(ref_model, pb.batch, ref_model is policy, cfg.ld_alpha)
        return dpo_step(logps, mean_logits, pb.batch.answer_mask, ref, settings, cfg.loss_type, cfg.weights,
                        pb.batch.num_tokens, totals, ld_alpha=cfg.ld_alpha, log_sum_sq=log_sum_sq)

    def chosen_tokens(item) -> int:  # the "sft" term's token mean is over chosen answers
        (_, (chosen, _)), _ = item
        return len(chosen)

    def sync_reference(step: int) -> dict[str, float]:
        """TR-DPO: the same deterministic update on every process (all hold the same policy)."""
        if step % cfg.ref_model_sync_steps == 0:
            soft_update(ref_model, policy, cfg.ref_model_mixup_alpha)
        return {"ref_syncs": float(step // cfg.ref_model_sync_steps)}

    metrics = fit(policy, train_set, make_batch, step_loss, chosen_tokens, cfg, out_dir, on_step, eval_set,
                  after_step=sync_reference if cfg.sync_ref_model else None,
                  checkpointed={"reference": ref_model} if cfg.sync_ref_model else None)
    metrics |= {"train_pairs": len(train_set), "eval_pairs": len(eval_set), "truncated_pairs": truncated_pairs,
                "reference_reused": float(reused), "reference_runtime": reference_runtime,
                "reference_is_policy": float(reference_model is None)}
    return save_trained(policy, tokenizer, cfg, out_dir, metrics)


def require_same_vocabulary(tokenizer, ref_path: str) -> None:
    """The reference scores the policy's token ids, so it must have the policy's vocabulary (not
    its chat template: it sees ids only)."""
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(ref_path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"reference_model {ref_path} has another vocabulary than the policy: the reference scores "
                         "the policy's token ids, so use a model with the policy's tokenizer (pi_0 of the same "
                         "SFT model, say)")


def frozen_copy(path: str, cfg: DPOConfig):
    """A reference model apart from the policy: the model at ``path``, frozen, on the device or,
    under FSDP, sharded as the policy is."""
    model = load_model(path, device=load_device(cfg)).eval().requires_grad_(False)
    return sharding.shard_model(model) if cfg.sharding == "fsdp" else model


def loss_settings(cfg: DPOConfig) -> LossSettings:
    return LossSettings(cfg.beta, cfg.label_smoothing, 0.5 if cfg.simpo_gamma is None else cfg.simpo_gamma,
                        cfg.discopop_tau, cfg.f_divergence_type, cfg.f_alpha_divergence_coef)


def shared_part(examples: Sequence) -> list:
    """Each (prompt, [chosen, rejected]) with both answers cut to the shorter one's length: the
    tokens LD-DPO counts whole."""
    return [(prompt, [a[: min(map(len, answers))] for a in answers]) for prompt, answers in examples]


def ld_weighted_sums(token_logps: torch.Tensor, answer_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization"): each
    answer's log-prob (2B,) as its first min(|c|, |r|) tokens' sum plus alpha times the rest's, from
    per-token log-probs (2B, A) of pairs in rows 2i, 2i+1 (TRL's shared and tail masks)."""
    lengths = answer_mask.sum(-1)
    shared = torch.minimum(lengths[0::2], lengths[1::2]).repeat_interleave(2)
    in_shared = torch.arange(token_logps.shape[1], device=token_logps.device)[None, :] < shared[:, None]
    zero = torch.zeros((), dtype=token_logps.dtype, device=token_logps.device)
    tail = answer_mask & ~in_shared
    return torch.where(in_shared, token_logps, zero).sum(-1) + alpha * torch.where(tail, token_logps, zero).sum(-1)


@torch.no_grad()
def reference_pair_logps(model, batch: Batch, disable_adapter: bool, ld_alpha: float | None) -> torch.Tensor:
    """(B, 2) reference log-probs of [chosen, rejected] run this step, LD-DPO-weighted under ``ld_alpha``."""
    if ld_alpha is None:
        return pair_logps(model, batch, disable_adapter)
    with model.disable_adapter() if disable_adapter else contextlib.nullcontext():
        logps, _ = answer_token_logps(model, batch)
    return ld_weighted_sums(logps, batch.answer_mask, ld_alpha).view(-1, 2)


@contextlib.contextmanager
def decoder_states(model):
    """Collect the decoder's final hidden states during the forwards inside: WPO reads the whole
    next-token distribution, which ``answer_token_logps`` reduces to the answer tokens' log-probs."""
    states: list[torch.Tensor] = []
    hook = base_model(model).get_decoder().register_forward_hook(
        lambda module, args, out: states.append(out.last_hidden_state))
    try:
        yield states
    finally:
        hook.remove()


@torch.no_grad()
def log_sum_sq_probs(model, batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
    """(N, A) log sum_v p(v)^2 of the next-token distribution at each answer token (zero elsewhere),
    from the decoder states ``hidden`` of ``answer_token_logps``'s forward: (R, L, H) padded rows or
    (1, T, H) packed tokens. Projected in fp32, a chunk of tokens at a time."""
    weight = base_model(model).get_output_embeddings().weight
    index = batch.predictor_index if hidden.shape[:2] == batch.input_ids.shape else batch.packed_predictor_index
    states = hidden.reshape(-1, hidden.shape[-1])[index[batch.loss_mask]]
    out = [torch.logsumexp(2 * torch.log_softmax((chunk @ weight.t()).float(), -1), -1)
           for chunk in states.split(LOGITS_CHUNK_TOKENS)]
    result = torch.zeros(batch.loss_mask.shape, dtype=torch.float32, device=hidden.device)
    return result.masked_scatter(batch.loss_mask, torch.cat(out)) if out else result


@torch.no_grad()
def wpo_weights(token_logps: torch.Tensor, log_sum_sq: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """WPO (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", eq. 2 with
    its sampling-aligned probabilities, as TRL): (B,) w(chosen) w(rejected), w(y) = exp of the mean
    over y's tokens of log p(y_t) - log sum_v p(v)^2, so pairs the policy itself would likely
    generate weigh more; no gradient flows through the weights."""
    aligned = ((token_logps - log_sum_sq) * answer_mask).sum(-1) / answer_mask.sum(-1).clamp(min=1)
    w = aligned.exp()
    return w[0::2] * w[1::2]


def dpo_step(logps, mean_logits, answer_mask, ref, settings: LossSettings, types, weights, num_tokens,
             totals: Totals, ld_alpha: float | None = None, log_sum_sq: torch.Tensor | None = None):
    """This batch's share of the step's mean loss and TRL-named metrics, from per-token answer
    log-probs (2B, A): per-pair values summed and divided by the step's pair count, so the shares
    of all micro-batches add up to the step's means (``num_tokens`` to the step's total). ``ref``
    (B, 2) is LD-DPO-weighted already when ``ld_alpha`` is set; ``log_sum_sq`` (2B, A), from
    ``log_sum_sq_probs``, turns on WPO's pair weights."""
    full = logps.sum(-1)
    summed = full if ld_alpha is None else ld_weighted_sums(logps, answer_mask, ld_alpha)
    lengths = answer_mask.sum(-1)
    s = PairLogps(
        policy_chosen=summed[0::2], policy_rejected=summed[1::2], ref_chosen=ref[:, 0], ref_rejected=ref[:, 1],
        chosen_tokens=lengths[0::2], rejected_tokens=lengths[1::2],
        step_chosen_tokens=totals.tokens / totals.examples, policy_chosen_unweighted=full[0::2],
        pair_weights=None if log_sum_sq is None else wpo_weights(logps, log_sum_sq, answer_mask),
    )
    loss = combined_loss(s, settings, types, weights).sum() / totals.examples
    rc = settings.beta * (s.policy_chosen - s.ref_chosen).detach()
    rr = settings.beta * (s.policy_rejected - s.ref_rejected).detach()

    def share(per_pair: torch.Tensor) -> float:
        return per_pair.sum().item() / totals.examples

    metrics = {
        "loss": loss.item(),
        "rewards/chosen": share(rc),
        "rewards/rejected": share(rr),
        "rewards/accuracies": share((rc > rr).float()),
        "rewards/margins": share(rc - rr),
        "logps/chosen": share(s.policy_chosen.detach()),
        "logps/rejected": share(s.policy_rejected.detach()),
        # token-weighted within the batch like TRL (sum of per-position mean logits over its answer
        # tokens), then weighted by the batch's pairs like TRL's average over accumulated batches
        "logits/chosen": (mean_logits[0::2].sum() / lengths[0::2].sum()).item() * len(rc) / totals.examples,
        "logits/rejected": (mean_logits[1::2].sum() / lengths[1::2].sum()).item() * len(rc) / totals.examples,
        "num_tokens": float(num_tokens),
    }
    return loss, metrics

