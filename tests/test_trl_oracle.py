"""TRL as the oracle: for every loss TRL also has, and every modifier (WPO weighting, LD-DPO's
ld_alpha, f-DPO's divergences), our loss and gradients on the same batch match TRL's
``DPOTrainer.compute_loss`` within 1e-5.

TRL tokenizes and collates the pairs; its batch is converted to our layout (shared prompt, two
answers), and both sides run a perturbed policy in float64. Both use the same exact reference
log-probs (fed to TRL through its precomputed-reference path): TRL's own no-grad reference
forward goes through its fused LM head, which differs from an exact float64 forward by ~1e-3 nats
per sequence, more than the tolerance, while its gradient path matches exactly.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from torch.testing import assert_close
from trl import DPOConfig as TRLConfig
from trl import DPOTrainer

from dpo_core.common.models import load_model, load_tokenizer
from dpo_core.train.batching import answer_token_logps, collate
from dpo_core.train.config import DPOConfig
from dpo_core.train.dpo.trainer import decoder_states, dpo_step, ld_weighted_sums, log_sum_sq_probs, loss_settings
from dpo_core.train.loop import Totals


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


PAIRS = [
    {"prompt": _user("Name a fruit."), "chosen": _assistant("An apple."),
     "rejected": _assistant("I would rather not say anything about fruit at all.")},
    {"prompt": _user("Say hi in French, please, and nothing more."), "chosen": _assistant("Bonjour"),
     "rejected": _assistant("Hello!")},
    {"prompt": _user("Count to three."), "chosen": _assistant("1, 2, 3."), "rejected": _assistant("One.")},
]

# (loss_type, loss_weights, other settings under the names TRL's DPOConfig and ours share; beta 0.2
# unless given). Both sides' log-probs are fp32 sums (TRL's fused head accumulates in fp32, ours
# projects in fp32), apart by ~1e-6 nats, and their gradients by ~1e-6 of their size: gradients are
# compared within 1e-5 of the largest TRL gradient entry (1e-5 where that is below 1). A loss with
# steep curvature magnifies the log-prob rounding, so SPPO runs at beta 1 (targets +-1/(2 beta) =
# +-0.5, not +-2.5: a loss of ~13 at beta 0.2) and DiscoPOP's default tau = 0.05 at beta 1, where
# its mix has settled on the exponential for won pairs and the logistic for lost ones (its 1/tau
# slope turns 1e-6 nats into 1e-5 in the gradient at beta 0.2); tau = 0.5 checks the blend between.
CASES = [
    (["sigmoid"], None, {}),
    (["hinge"], None, {}),
    (["ipo"], None, {}),
    (["robust"], None, {"label_smoothing": 0.2}),
    (["sigmoid_norm"], None, {}),
    (["sft"], None, {}),
    (["sigmoid", "sft"], [1.0, 0.5], {}),  # RPO
    (["exo_pair"], None, {"label_smoothing": 1e-3}),
    (["exo_pair"], None, {"label_smoothing": 0.2}),
    (["nca_pair"], None, {}),
    (["bco_pair"], None, {}),
    (["sppo_hard"], None, {"beta": 1.0}),
    (["aot"], None, {"label_smoothing": 0.1}),
    (["aot_unpaired"], None, {"label_smoothing": 0.1}),
    (["apo_zero"], None, {}),
    (["apo_down"], None, {}),
    (["discopop"], None, {"beta": 1.0}),
    (["discopop"], None, {"discopop_tau": 0.5}),
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], {}),  # MPO, TRL's example of loss_weights
    (["sigmoid"], None, {"use_weighting": True}),  # WPO
    (["apo_zero", "bco_pair"], [1.0, 0.3], {"use_weighting": True}),
    (["sigmoid"], None, {"ld_alpha": 0.5}),  # LD-DPO
    (["sigmoid", "sft"], [1.0, 0.5], {"ld_alpha": 0.0}),  # sft keeps every token under ld_alpha
    (["ipo", "sppo_hard"], None, {"beta": 1.0, "ld_alpha": 0.3, "use_weighting": True}),
    (["aot"], None, {"ld_alpha": 0.5, "label_smoothing": 0.1}),
    (["sigmoid"], None, {"f_divergence_type": "forward_kl"}),
    (["sigmoid"], None, {"f_divergence_type": "js_divergence"}),
    (["sigmoid", "sft"], None, {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3}),
    (["hinge", "ipo", "sigmoid_norm"], None, {"f_divergence_type": "js_divergence"}),
    (["robust", "exo_pair", "discopop"], [0.5, 0.3, 0.2],
     {"f_divergence_type": "forward_kl", "label_smoothing": 0.1, "discopop_tau": 0.5}),
]


def _to_our_batch(inputs, pad_id):
    """TRL's [chosen rows; rejected rows] right-padded batch -> (prompt, [chosen, rejected]) examples."""
    ids, attn, comp = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
    n = ids.shape[0] // 2
    examples = []
    for i in range(n):
        parts = []
        for row in (i, i + n):
            prompt = ids[row][(attn[row] == 1) & (comp[row] == 0)].tolist()
            parts.append((prompt, ids[row][comp[row] == 1].tolist()))
        assert parts[0][0] == parts[1][0], "TRL encoded the two prompts differently"
        examples.append((parts[0][0], [parts[0][1], parts[1][1]]))
    return collate(examples, pad_id)


def _case_id(case) -> str:
    loss_type, weights, extra = case
    return "+".join(loss_type) + "".join(f"-{k}={v}" for k, v in extra.items())


@pytest.mark.parametrize(("loss_type", "weights", "extra"), CASES, ids=[_case_id(c) for c in CASES])
def test_loss_and_gradients_match_trl(tiny_model, tmp_path, loss_type, weights, extra):
    extra = {"beta": 0.2} | extra
    tok = load_tokenizer(tiny_model)
    reference = load_model(tiny_model).double()
    policy = load_model(tiny_model).double()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = TRLConfig(output_dir=str(tmp_path), loss_type=loss_type, loss_weights=weights, report_to=[],
                     use_cpu=True, per_device_train_batch_size=3, **extra)
    cfg = DPOConfig(loss_type=loss_type, loss_weights=weights, **extra)  # accepts what TRL runs
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=tok)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    batch = _to_our_batch(inputs, tok.pad_token_id)
    with torch.no_grad():
        ref_tokens = answer_token_logps(reference.eval(), batch)[0]
    if cfg.ld_alpha is None:
        ref = ref_tokens.sum(-1).view(-1, 2)
    else:  # TRL's precomputed reference is LD-weighted too (compute_ref_log_probs)
        ref = ld_weighted_sums(ref_tokens, batch.answer_mask, cfg.ld_alpha).view(-1, 2)
    inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
    trainer.precompute_ref_logps = True
    policy.train()
    trl_loss = trainer.compute_loss(policy, inputs)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)

    with decoder_states(policy) as states:  # as the trainer's step_loss does under use_weighting
        logps, mean_logits = answer_token_logps(policy, batch)
    log_sum_sq = log_sum_sq_probs(policy, batch, states[-1]) if cfg.use_weighting else None
    whole_step = Totals(examples=len(PAIRS), tokens=int(batch.answer_mask[0::2].sum()))  # chosen tokens
    ours, metrics = dpo_step(logps, mean_logits, batch.answer_mask, ref, loss_settings(cfg), loss_type, cfg.weights,
                             batch.num_tokens, whole_step, ld_alpha=cfg.ld_alpha, log_sum_sq=log_sum_sq)
    ours.backward()

    assert_close(ours, trl_loss, rtol=0, atol=1e-5)
    scale = max(1.0, max(g.abs().max().item() for g in trl_grads.values()))
    for name, p in policy.named_parameters():
        assert_close(p.grad, trl_grads[name], rtol=0, atol=1e-5 * scale, msg=name)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "logits/chosen", "logits/rejected", "rewards/accuracies"):
        assert metrics[key] == pytest.approx(trl_metrics[key], abs=1e-4), key
