"""TRL as the oracle: for every loss TRL also has, our loss and gradients on the same batch match
TRL's ``DPOTrainer.compute_loss`` within 1e-5.

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
from dpo_core.train.dpo.losses import LossSettings
from dpo_core.train.dpo.trainer import dpo_step
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

CASES = [
    (["sigmoid"], None, 0.0),
    (["hinge"], None, 0.0),
    (["ipo"], None, 0.0),
    (["robust"], None, 0.2),
    (["sigmoid_norm"], None, 0.0),
    (["sft"], None, 0.0),
    (["sigmoid", "sft"], [1.0, 0.5], 0.0),  # RPO
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


@pytest.mark.parametrize(("loss_type", "weights", "smoothing"), CASES)
def test_loss_and_gradients_match_trl(tiny_model, tmp_path, loss_type, weights, smoothing):
    tok = load_tokenizer(tiny_model)
    reference = load_model(tiny_model).double()
    policy = load_model(tiny_model).double()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = TRLConfig(output_dir=str(tmp_path), loss_type=loss_type, loss_weights=weights, beta=0.2,
                     label_smoothing=smoothing, report_to=[], use_cpu=True, per_device_train_batch_size=3)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=tok)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    batch = _to_our_batch(inputs, tok.pad_token_id)
    with torch.no_grad():
        ref = answer_token_logps(reference.eval(), batch)[0].sum(-1).view(-1, 2)
    inputs["ref_chosen_logps"], inputs["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
    trainer.precompute_ref_logps = True
    policy.train()
    trl_loss = trainer.compute_loss(policy, inputs)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)

    logps, mean_logits = answer_token_logps(policy, batch)
    whole_step = Totals(examples=len(PAIRS), tokens=int(batch.answer_mask[0::2].sum()))  # chosen tokens
    ours, metrics = dpo_step(logps, mean_logits, batch.answer_mask, ref, LossSettings(0.2, smoothing),
                             loss_type, weights or [1.0] * len(loss_type), batch.num_tokens, whole_step)
    ours.backward()

    assert_close(ours, trl_loss, rtol=0, atol=1e-5)
    for name, p in policy.named_parameters():
        assert_close(p.grad, trl_grads[name], rtol=0, atol=1e-5, msg=name)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "logits/chosen", "logits/rejected", "rewards/accuracies"):
        assert metrics[key] == pytest.approx(trl_metrics[key], abs=1e-4), key
