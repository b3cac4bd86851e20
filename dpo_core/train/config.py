"""The SFT and DPO configs: every field the trainers read, with why its default was chosen.

Kept free of torch so Prefect's flow process, ``prefect deploy`` and the UI's parameter forms
load them without loading a model stack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dpo_core.common.config import config_dataclass

LossName = Literal["sigmoid", "cdpo", "robust", "ipo", "ipo_sum", "hinge", "sigmoid_norm", "simpo", "sft",
                   "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down",
                   "discopop"]
REFERENCE_FREE = {"simpo", "sft"}  # losses that never read reference log-probs
NOISY_LABEL_LOSSES = {"cdpo", "robust", "exo_pair", "aot", "aot_unpaired"}  # losses that read label_smoothing
# Losses built on the chosen-minus-rejected score difference, where f-DPO's reparameterisation holds
# (its beta log Z(x) term cancels only in that difference): TRL 1.16's list plus cdpo and ipo_sum,
# which it lacks. The reference-free ones read no scores, so they sit beside any f-divergence.
F_DIVERGENCE_LOSSES = {"sigmoid", "cdpo", "sigmoid_norm", "hinge", "ipo", "ipo_sum", "exo_pair", "robust", "discopop"}
SORTING_LOSSES = {"aot", "aot_unpaired"}  # sort over the micro-batch, so a pair's loss is not its own
FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]


@config_dataclass
class TrainConfig:
    lora: bool = Field(True, description="Train a LoRA adapter (on by default: a 135M-7B model fits one device); "
                                         "off: full fine-tune")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank; 16 on all linear layers matches the QLoRA "
                                                       "paper's quality at a small adapter")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r = 2, the common choice)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input; 0 keeps runs "
                                                                 "deterministic and small sets rarely overfit in 1-2 epochs")
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate; LoRA needs rates far above "
                                                                   "a full fine-tune's (2e-4 vs ~2e-5)")
    epochs: int = Field(1, ge=1, le=100, description="Passes over the training set (Zephyr: 1 for SFT)")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (the schedule spans them)")
    batch_size: int = Field(4, ge=1, description="Examples (SFT) or pairs (DPO) per micro-batch, per process")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of optimizer steps spent warming up "
                                                                 "(0.1, as the alignment-handbook recipes)")
    scheduler: Literal["cosine", "linear"] = Field("cosine", description="Decay after warm-up")
    max_grad_norm: float = Field(1.0, ge=0.0, description="Clip the global gradient norm to this (0: no clipping)")
    optimizer_in_backward: bool = Field(
        False, description="Step each parameter inside backward: no whole gradient held (needs max_grad_norm=0)")
    max_length: int = Field(512, ge=16, description="Prompt + answer tokens; longer examples lose the prompt's start")
    gradient_checkpointing: bool = Field(True, description="Recompute layer activations in backward (TRL's default): "
                                                           "less memory for about a third more compute")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that has it or a CPU with bf16 matrix units "
                            "(AVX512_BF16 or AMX: about 4x fp32 matmuls), else fp32; losses, log-probs and "
                            "AdamW stay fp32 either way")
    eval_steps: int = Field(0, ge=0, description="Evaluate on the held-out pairs every N optimizer steps "
                                                 "(0: only at the end)")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N optimizer steps for resume (0: by time, "
                                                 "checkpoint_interval_s)")
    checkpoint_interval_s: float = Field(60.0, ge=0.0, description=(
        "With save_steps=0: checkpoint once this much training time has passed since the last checkpoint (or the "
        "start) and 20 times as long as the last one took to write. So checkpoints cost at most 5% of training "
        "time, a crashed run repeats at most that much work when run again, and a run shorter than this writes "
        "none (restarting it costs less). 0 (with save_steps=0): never checkpoint"))
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept: the newest, and one before it in case "
                                                       "the newest was cut short")
    seed: int = Field(0, ge=0, description="Seeds the data order, LoRA init and dropout")
    num_processes: int = Field(1, ge=1, le=1024, description=(
        "Data-parallel processes started by accelerate launch, one per GPU (with sharding=fsdp each also holds "
        "1/num_processes of the model); each optimizer step takes batch_size * grad_accum * num_processes examples"))
    sharding: Literal["none", "fsdp"] = Field("none", description=(
        "none: every process holds the whole model (data parallelism); fsdp: PyTorch's FSDP2 shards weights, "
        "gradients and AdamW state over the num_processes processes (each decoder layer and the root), for a full "
        "fine-tune too big for one device (LoRA works too). Launched as data parallelism is: accelerate launch, or "
        "torchrun --nproc-per-node N -m dpo_core STAGE JOB OUT; N processes take the steps of one with grad_accum * N"))

    def __post_init__(self):
        if self.optimizer_in_backward and (self.max_grad_norm or self.grad_accum > 1 or self.num_processes > 1):
            raise ValueError("optimizer_in_backward updates each parameter as soon as its gradient is ready, so it "
                             "cannot clip by the global norm, accumulate, or sum gradients over processes: set "
                             "max_grad_norm=0, grad_accum=1 and num_processes=1")
        if self.sharding == "fsdp" and self.num_processes < 2:
            raise ValueError(f"sharding=fsdp with num_processes={self.num_processes}: FSDP shards the model over "
                             "processes, so set num_processes to the GPUs to shard over (2 or more), or sharding=none")


SFTSource = Literal["conversations", "chosen", "teacher", "best"]


@config_dataclass
class SFTConfig(TrainConfig):
    sources: list[SFTSource] | None = Field(
        None, min_length=1, description=(
            "What SFT trains on, any mix: conversations (the team's chats, every assistant turn), chosen (the chosen "
            "answers of the team's preference pairs), teacher (the teacher generator's first answer to each prompt: "
            "distilled SFT as in Zephyr), best (each prompt's best judged candidate: rejection-sampling fine-tuning, "
            "the DPO paper's recipe when no SFT data exists). Unset: what the data holds (sft_sources says which)"))
    teacher: str | None = Field(None, description="teacher source: the generator whose answers SFT imitates, named as "
                                                  "candidates.jsonl's model field names it (a local model reference, "
                                                  "or openai:<model>)")
    min_score: float | None = Field(None, ge=0.0, le=1.0, description=(
        "best source: a prompt's best candidate joins only if it scores at least this (1.0: follows every "
        "instruction, for the verifiable judge). Unset: the best of each prompt whose candidates are not all tied, "
        "which holds on any judge's scale"))

    def __post_init__(self):
        super().__post_init__()
        if self.eval_steps:
            raise ValueError(f"eval_steps={self.eval_steps}: SFT holds out no examples to evaluate on; set "
                             "eval_steps=0")
        if self.sources is None:
            return
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources={self.sources} names a source twice: list each once")
        if ("teacher" in self.sources) != (self.teacher is not None):
            raise ValueError(f"teacher={self.teacher!r} with sources={self.sources}: the teacher source needs teacher "
                             "(a generator's name in candidates.jsonl), and teacher is read only by it; set both or "
                             "neither")
        if self.min_score is not None and "best" not in self.sources:
            raise ValueError(f"min_score={self.min_score} is read only by the best source, not {self.sources}: add "
                             "best to sources or leave min_score unset")


def sft_sources(cfg: SFTConfig, has_conversations: bool, has_pairs: bool) -> list[str]:
    """``cfg.sources``, or when unset what the team's data holds: its conversations (with the teacher's
    answers when a teacher is set), else the teacher's answers, else the chosen answers of its pairs,
    else the best judged candidates."""
    if cfg.sources is not None:
        return list(cfg.sources)
    if has_conversations:
        sources = ["conversations", *(["teacher"] if cfg.teacher else [])]
    elif cfg.teacher:
        sources = ["teacher"]
    else:
        sources = ["chosen"] if has_pairs else ["best"]
    if cfg.min_score is not None and "best" not in sources:
        raise ValueError(f"min_score={cfg.min_score} is read only by the best source, and this data gives SFT "
                         f"{sources}: set sources to include best, or leave min_score unset")
    return sources


def sft_needs_feedback(sources: list[str]) -> bool:
    """Whether SFT reads the feedback stage's candidates (so feedback runs first, from the base model)."""
    return bool({"teacher", "best"} & set(sources))


@config_dataclass
class DPOConfig(TrainConfig):
    """The model passed to ``train_dpo`` is the starting policy and, unless ``train_dpo`` is given a
    ``reference_model``, the reference too."""

    beta: float = Field(0.1, gt=0.0, le=10.0, description="Strength of the KL anchor to the reference (DPO's beta; "
                                                          "0.1 as in Zephyr)")
    loss_type: list[LossName] = Field(default_factory=lambda: ["sigmoid"], min_length=1, description=(
        "One or more losses, summed with loss_weights (TRL's names; losses.py cites each one's paper). aot and "
        "aot_unpaired sort the pairs of each micro-batch of batch_size, as TRL sorts each device's batch"))
    loss_weights: list[float] | None = Field(None, description="One weight per loss type (default: all 1.0)")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description=(
        "cdpo / robust / aot / aot_unpaired: assumed share of flipped preference labels (Robust DPO suggests 0.1); "
        "exo_pair: its label smoothing eps, which must be above 0 (the EXO paper: 1e-3)"))
    simpo_gamma: float | None = Field(None, ge=0.0, description="simpo only: target reward margin (default 0.5, "
                                                                "the SimPO paper's middle setting)")
    discopop_tau: float = Field(0.05, gt=0.0, description="discopop only: temperature of its logistic/exponential "
                                                          "mix (0.05, the DiscoPOP paper's and TRL's default)")
    f_divergence_type: FDivergence = Field("reverse_kl", description=(
        "f-DPO (Wang et al. 2023): the divergence to the reference, reverse_kl (DPO), forward_kl, js_divergence or "
        "alpha_divergence; read by the losses on the chosen-minus-rejected difference (sigmoid, cdpo, "
        "sigmoid_norm, hinge, ipo, ipo_sum, exo_pair, robust, discopop), refused with the others as TRL does"))
    f_alpha_divergence_coef: float = Field(0.5, description=(
        "f_divergence_type=alpha_divergence only: its alpha (TRL's default 0.5; 1 is reverse KL)"))
    ld_alpha: float | None = Field(None, ge=0.0, le=1.0, description=(
        "LD-DPO (Liu et al. 2024): each answer's log-prob counts its first min(|chosen|, |rejected|) tokens whole "
        "and the rest times ld_alpha, for policy and reference (the sft term keeps every token); 1 is plain DPO, "
        "0 drops the longer answer's tail. Unset: off, as TRL's default"))
    use_weighting: bool = Field(False, description=(
        "WPO (Zhou et al. 2024): scale each pair's loss by w(chosen) w(rejected), w(y) = exp(mean over y's tokens "
        "of log p(y_t) - log sum_v p(v)^2) under the policy, no gradient through it; refused with aot, "
        "aot_unpaired and sft, and with sharding=fsdp"))
    precompute_reference: bool = Field(True, description="Reference log-probs once before training, cached on disk "
                                                         "(no second model in memory)")
    share_prefix: bool = Field(True, description="Run each pair's prompt once for both answers (prefix sharing: "
                                                 "same result, fewer tokens)")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share of pairs held out for eval_ metrics and "
                                                                  "the evaluation stage's preference accuracy")
    sync_ref_model: bool = Field(False, description=(
        "TR-DPO (Gorbatovski et al. 2024, \"Learn Your Reference Model for Real Good Alignment\"; TRL's name): "
        "every ref_model_sync_steps optimizer steps the reference moves towards the policy, "
        "ref = alpha * policy + (1 - alpha) * ref. Keeps a full copy of the reference (LoRA too), saved with "
        "each checkpoint, and needs precompute_reference=False"))
    ref_model_mixup_alpha: float = Field(0.6, gt=0.0, le=1.0, description=(
        "sync_ref_model only: the policy's share alpha in each soft update (TRL's default 0.6; 1 is the paper's "
        "hard update: the reference becomes the policy)"))
    ref_model_sync_steps: int = Field(512, ge=1, description=(
        "sync_ref_model only: optimizer steps between soft updates (TRL's default 512)"))

    def __post_init__(self):
        super().__post_init__()
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} entries for {len(self.loss_type)} loss types")
        if self.label_smoothing and not NOISY_LABEL_LOSSES & set(self.loss_type):
            raise ValueError(f"label_smoothing={self.label_smoothing} is read only by the "
                             f"{', '.join(sorted(NOISY_LABEL_LOSSES))} losses, not {self.loss_type}: add one of them "
                             "to loss_type or set label_smoothing=0")
        if "exo_pair" in self.loss_type and not self.label_smoothing:
            raise ValueError("loss_type exo_pair needs label_smoothing above 0 (its target's mass on the rejected "
                             "answer, log eps in the loss): set label_smoothing=1e-3, the EXO paper's value")
        if self.simpo_gamma is not None and "simpo" not in self.loss_type:
            raise ValueError(f"simpo_gamma={self.simpo_gamma} is read only by the simpo loss, not {self.loss_type}: "
                             "add simpo to loss_type or leave simpo_gamma unset")
        if self.eval_steps and not self.eval_fraction:
            raise ValueError(f"eval_steps={self.eval_steps} needs held-out pairs: set eval_fraction above 0 "
                             "(0.1, say) or eval_steps=0")
        self._check_loss_modifiers()
        self._check_tr_dpo()

    def _check_loss_modifiers(self):
        """discopop_tau, f-DPO, LD-DPO, WPO and AOT's sort: refused where they do nothing, where TRL
        refuses them, and where they cannot be split into per-pair shares of a step."""
        types, fields = set(self.loss_type), type(self).__pydantic_fields__
        if self.discopop_tau != fields["discopop_tau"].default and "discopop" not in types:
            raise ValueError(f"discopop_tau={self.discopop_tau} is read only by the discopop loss, not "
                             f"{self.loss_type}: add discopop to loss_type or keep the default")
        if self.f_alpha_divergence_coef != fields["f_alpha_divergence_coef"].default and \
                self.f_divergence_type != "alpha_divergence":
            raise ValueError(f"f_alpha_divergence_coef={self.f_alpha_divergence_coef} is read only with "
                             "f_divergence_type=alpha_divergence: set that or keep the default")
        if self.f_divergence_type != "reverse_kl":
            unsupported = sorted(types - F_DIVERGENCE_LOSSES - REFERENCE_FREE)
            if unsupported:
                raise ValueError(f"f_divergence_type={self.f_divergence_type} with loss_type {unsupported}: f-DPO "
                                 "holds only for losses on the chosen-minus-rejected difference "
                                 f"({', '.join(sorted(F_DIVERGENCE_LOSSES))}), as TRL refuses too; drop them or set "
                                 "f_divergence_type=reverse_kl")
            if not types & F_DIVERGENCE_LOSSES:
                raise ValueError(f"f_divergence_type={self.f_divergence_type} with loss_type={self.loss_type}: these "
                                 "losses read no reference; add sigmoid (say) or set f_divergence_type=reverse_kl")
        if self.ld_alpha is not None and types <= {"sft"}:
            raise ValueError(f"ld_alpha={self.ld_alpha} with loss_type={self.loss_type}: sft counts every token, so "
                             "ld_alpha would do nothing; add a preference loss or leave ld_alpha unset")
        if self.use_weighting:
            if types & SORTING_LOSSES:
                raise ValueError(f"use_weighting=True with loss_type {sorted(types & SORTING_LOSSES)}: AOT sorts the "
                                 "pairs, so its losses are no longer any pair's to weight (TRL refuses it too); drop "
                                 "aot / aot_unpaired or set use_weighting=False")
            if "sft" in types:
                raise ValueError("use_weighting=True with loss_type sft: TRL scales the batch's token-mean NLL by the "
                                 "batch's mean WPO weight, a product of two batch means that has no per-pair share "
                                 "to sum over micro-batches and processes; drop sft or set use_weighting=False")
            if self.sharding == "fsdp":
                raise ValueError("use_weighting=True is not implemented for sharding=fsdp (WPO's weights project the "
                                 "decoder's states through the sharded vocabulary head): set sharding=none or "
                                 "use_weighting=False")
        if types & SORTING_LOSSES and self.batch_size < 2:
            raise ValueError(f"loss_type {sorted(types & SORTING_LOSSES)} sorts the pairs of each micro-batch, and "
                             "batch_size=1 leaves nothing to sort (it would be cdpo): set batch_size to 2 or more")

    def _check_tr_dpo(self):
        """TR-DPO's settings, refused where they would do nothing or cannot work."""
        fields = type(self).__pydantic_fields__
        changed = [f"{name}={getattr(self, name)}" for name in ("ref_model_mixup_alpha", "ref_model_sync_steps")
                   if getattr(self, name) != fields[name].default]
        if changed and not self.sync_ref_model:
            raise ValueError(f"{', '.join(changed)}: read only by TR-DPO; set sync_ref_model=True or keep the "
                             "default")
        if not self.sync_ref_model:
            return
        if self.precompute_reference:
            raise ValueError("sync_ref_model=True moves the reference during training, so its log-probs cannot be "
                             "precomputed: set precompute_reference=False")
        if not self.needs_reference:
            raise ValueError(f"sync_ref_model=True with loss_type={self.loss_type}: these losses read no reference; "
                             "add a reference-based loss (sigmoid, say) or set sync_ref_model=False")
        if self.sharding == "fsdp":
            raise ValueError("sync_ref_model=True is not implemented for sharding=fsdp: set sharding=none or "
                             "sync_ref_model=False")

    @property
    def weights(self) -> list[float]:
        return self.loss_weights or [1.0] * len(self.loss_type)

    @property
    def needs_reference(self) -> bool:
        return not set(self.loss_type) <= REFERENCE_FREE
