"""DPO numerics: every loss and modifier (f-divergences, WPO weights, LD-DPO's split) against a
value derived by hand in float64, and the answer log-probs of the prefix-shared, chunked forward
(and WPO's log sum p^2 beside them) against a plain full-logits computation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_distributed import _assert_same_training, _pairs, _run
from torch.testing import assert_close

from dpo_core.common.io import write_jsonl
from dpo_core.common.models import load_model
from dpo_core.train.batching import PACKED_ATTENTION, answer_token_logps, collate
from dpo_core.train.config import DPOConfig, TrainConfig
from dpo_core.train.dpo.losses import LOSSES, LossSettings, PairLogps, combined_loss, margin
from dpo_core.train.dpo.reference import compute_reference_logps
from dpo_core.train.dpo.trainer import (
    decoder_states,
    ld_weighted_sums,
    log_sum_sq_probs,
    shared_part,
    train_dpo,
    wpo_weights,
)
from dpo_core.train.loop import prepare_for_training

# One pair, float64:  pc=-10, pr=-14, rc=-11, rr=-12, |c|=4, |r|=8, and its step's pairs average
# c_step=5 chosen tokens (this pair's 4 among them); beta=0.2 keeps every loss off its flat parts
#   lc, lr  = pc - rc, pr - rr = 1, -2,              beta lc = 0.2, beta lr = -0.4
#   d       = (pc - rc) - (pr - rr) = 1 - (-2) = 3,   beta d = 0.6
#   d_avg   = 1/4 - (-2/8) = 0.5,                    beta d_avg = 0.1
# eps = label_smoothing = 0.2; discopop's tau = 0.5 puts its mix mid-blend: m = sigmoid(0.6 / 0.5)
S = PairLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-10.0, -14.0, -11.0, -12.0, 4.0, 8.0)),
              step_chosen_tokens=5.0)
OPTS = LossSettings(beta=0.2, label_smoothing=0.2, simpo_gamma=0.3, discopop_tau=0.5)


def softplus(x: float) -> float:  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


EXPECTED = {
    "sigmoid": softplus(-0.6),  # -log sigmoid(0.6) = 0.4375
    "cdpo": 0.8 * softplus(-0.6) + 0.2 * softplus(0.6),
    "robust": (0.8 * softplus(-0.6) - 0.2 * softplus(0.6)) / 0.6,
    "ipo": (0.5 - 1 / (2 * 0.2)) ** 2,  # (d_avg - 1/(2 beta))^2 = (0.5 - 2.5)^2 = 4
    "ipo_sum": (3 - 1 / (2 * 0.2)) ** 2,  # (3 - 2.5)^2 = 0.25
    "hinge": 0.4,  # max(0, 1 - beta d) = 1 - 0.6: inside the margin, where the hinge has a gradient
    "sigmoid_norm": softplus(-0.1),  # -log sigmoid(beta d_avg)
    "simpo": softplus(0.45),  # beta (pc/|c| - pr/|r|) - gamma = 0.2 (-2.5 + 1.75) - 0.3 = -0.45
    "sft": 2.0,  # -pc / c_step = 10 / 5: this pair's share of the step's NLL per chosen token
    # KL(q || p), q = (sig(0.6), sig(-0.6)), p = (0.8, 0.2): 0.6457 (-0.4375 + 0.2231) + 0.3543 (-1.0375 + 1.6094)
    "exo_pair": sig(0.6) * (-softplus(-0.6) - math.log(0.8)) + sig(-0.6) * (-softplus(0.6) - math.log(0.2)),
    # -log sig(0.2) - 1/2 log sig(-0.2) - 1/2 log sig(0.4) = 0.5981 + 0.3993 + 0.2566
    "nca_pair": softplus(-0.2) + 0.5 * softplus(0.2) + 0.5 * softplus(-0.4),
    "bco_pair": softplus(-0.2) + softplus(-0.4),  # -log sig(0.2) - log sig(0.4) = 0.5981 + 0.5130
    "sppo_hard": (1 - 2.5) ** 2 + (-2 + 2.5) ** 2,  # (lc - 1/(2 beta))^2 + (lr + 1/(2 beta))^2 = 2.25 + 0.25
    # one pair: nothing to sort, delta = (pc - pr) - (rc - rr) = 4 - 1 = 3 (see the two-pair test below)
    "aot": 0.8 * softplus(-0.6) + 0.2 * softplus(0.6),
    "aot_unpaired": 0.8 * softplus(-0.6) + 0.2 * softplus(0.6),  # sorted lc - sorted lr = 1 - (-2) = 3
    "apo_zero": 1 - sig(0.2) + sig(-0.4),  # 1 - 0.5498 + 0.4013 = 0.8515
    "apo_down": sig(0.2) + 1 - sig(0.6),  # 0.5498 + 1 - 0.6457 = 0.9041
    # (1 - m)(-log sig(0.6)) + m e^-0.6, m = sig(1.2) = 0.7685: 0.2315 * 0.4375 + 0.7685 * 0.5488
    "discopop": (1 - sig(1.2)) * softplus(-0.6) + sig(1.2) * math.exp(-0.6),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_hand_derivation(name):
    assert_close(LOSSES[name](S, OPTS), torch.tensor([EXPECTED[name]], dtype=torch.float64))


def test_every_loss_has_a_hand_derivation():
    assert set(EXPECTED) == set(LOSSES)


def test_combined_loss_is_the_weighted_sum():
    got = combined_loss(S, OPTS, ["sigmoid", "sft"], [1.0, 0.2])  # RPO with alpha = 0.2
    assert_close(got, torch.tensor([EXPECTED["sigmoid"] + 0.2 * 2.0], dtype=torch.float64))


def test_aot_sorts_the_margins_over_the_batch():
    """Two pairs whose order by policy margin differs from their order by reference margin:
    pair A: pc - pr = 1, rc - rr = 3 (lc = 0, lr = 2); pair B: pc - pr = 2, rc - rr = 0 (lc = 3, lr = 1).
    aot:          sort(1, 2) - sort(3, 0) = (1, 2) - (0, 3) = (1, -1), where pairs alone give (-2, 2);
    aot_unpaired: sort(lc) - sort(lr) = (0, 3) - (1, 2) = (-1, 1), where pairs alone give (-2, 2).
    Each entry: -(0.8) log sig(0.2 delta) - 0.2 log sig(-0.2 delta)."""
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    s = PairLogps(t(-5.0, -4.0), t(-6.0, -6.0), t(-5.0, -7.0), t(-8.0, -7.0), t(1.0, 1.0), t(1.0, 1.0),
                  step_chosen_tokens=1.0)

    def smoothed(delta):
        return 0.8 * softplus(-0.2 * delta) + 0.2 * softplus(0.2 * delta)

    assert_close(LOSSES["aot"](s, OPTS), t(smoothed(1.0), smoothed(-1.0)))
    assert_close(LOSSES["aot_unpaired"](s, OPTS), t(smoothed(-1.0), smoothed(1.0)))


# f-DPO's scores of lc = 1, lr = -2 (TRL's f'(pi / pi_ref) as functions of u = log-ratio):
#   forward KL: (1 - e^-1) - (1 - e^2) = e^2 - e^-1 = 7.0211
#   JS:         log sig(1) - log sig(-2) = softplus(2) - softplus(-1) = 2.1269 - 0.3133 = 1.8136
#   alpha 0.5:  (e^-0.5 - 1) / -0.5 - (e^1 - 1) / -0.5 = 2 (1 - e^-0.5) + 2 (e - 1) = 4.2235
F_MARGINS = {
    "reverse_kl": 3.0,
    "forward_kl": math.exp(2) - math.exp(-1),
    "js_divergence": softplus(2) - softplus(-1),
    "alpha_divergence": 2 * (1 - math.exp(-0.5)) + 2 * (math.e - 1),
}


@pytest.mark.parametrize("kind", sorted(F_MARGINS))
def test_f_divergence_margins_match_hand_derivation(kind):
    opts = LossSettings(beta=0.2, f_divergence_type=kind, f_alpha_divergence_coef=0.5)
    assert_close(margin(S, opts), torch.tensor([F_MARGINS[kind]], dtype=torch.float64))
    # and the losses read them: DPO's -log sigmoid(beta d) with d the f-margin
    assert_close(LOSSES["sigmoid"](S, opts), torch.tensor([softplus(-0.2 * F_MARGINS[kind])], dtype=torch.float64))


def test_alpha_divergence_at_alpha_one_is_reverse_kl():
    opts = LossSettings(beta=0.2, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0)
    assert_close(margin(S, opts), torch.tensor([3.0], dtype=torch.float64))


# Per-token log-probs of one pair (rows chosen, rejected; zero-padded): chosen (-1, -2, -3), rejected (-4, -5).
TOKENS = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_ld_alpha_counts_the_shared_length_whole_and_the_tail_by_alpha():
    """Shared length min(3, 2) = 2. chosen: (-1 - 2) + 0.5 (-3) = -4.5; rejected: (-4 - 5) + 0.5 * 0 = -9.
    alpha = 1 gives the plain sums (-6, -9), alpha = 0 the shared parts (-3, -9)."""
    assert_close(ld_weighted_sums(TOKENS, MASK, 0.5), torch.tensor([-4.5, -9.0], dtype=torch.float64))
    assert_close(ld_weighted_sums(TOKENS, MASK, 1.0), TOKENS.sum(-1))
    assert_close(ld_weighted_sums(TOKENS, MASK, 0.0), torch.tensor([-3.0, -9.0], dtype=torch.float64))


def test_wpo_weight_is_the_product_of_the_answers_aligned_probabilities():
    """log sum p^2 per token: chosen (-0.5, -0.5, -1), rejected (-1, -2). Mean aligned log-probs:
    chosen ((-1 + 0.5) + (-2 + 0.5) + (-3 + 1)) / 3 = -4/3, rejected ((-4 + 1) + (-5 + 2)) / 2 = -3;
    the pair's weight e^(-4/3) e^-3 = e^(-13/3), and it scales every loss type's per-pair loss."""
    sq = torch.tensor([[-0.5, -0.5, -1.0], [-1.0, -2.0, 0.0]], dtype=torch.float64)
    weight = wpo_weights(TOKENS, sq, MASK)
    assert_close(weight, torch.tensor([math.exp(-13 / 3)], dtype=torch.float64))
    s = PairLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-10.0, -14.0, -11.0, -12.0, 4.0, 8.0)),
                  step_chosen_tokens=5.0, pair_weights=weight)
    got = combined_loss(s, OPTS, ["sigmoid", "apo_zero"], [1.0, 0.5])
    expected = math.exp(-13 / 3) * (EXPECTED["sigmoid"] + 0.5 * EXPECTED["apo_zero"])
    assert_close(got, torch.tensor([expected], dtype=torch.float64))


def test_sft_reads_every_token_under_ld_alpha():
    s = PairLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-10.0, -14.0, -11.0, -12.0, 4.0, 8.0)),
                  step_chosen_tokens=5.0, policy_chosen_unweighted=torch.tensor([-15.0], dtype=torch.float64))
    assert_close(LOSSES["sft"](s, OPTS), torch.tensor([3.0], dtype=torch.float64))  # 15 / 5, not 10 / 5


def test_sigmoid_is_ln2_when_policy_equals_reference():
    lp = torch.tensor([-7.0, -3.0], dtype=torch.float64)
    s = PairLogps(lp, lp + 1, lp, lp + 1, torch.ones(2), torch.ones(2), step_chosen_tokens=1.0)
    assert_close(LOSSES["sigmoid"](s, LossSettings(beta=0.1)), torch.full((2,), math.log(2.0), dtype=torch.float64))


EXAMPLES = [([5, 6, 7, 8], [[9, 10], [11, 12, 13, 14]]), ([15, 16], [[17, 18, 19, 20, 21], [22]]),
            ([23, 24, 25], [[26], [27, 28]])]


def _naive_logps(model, prompt, answer):
    """One unpadded forward over the whole sequence, log-softmax over every position."""
    full = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0, :-1].double(), -1)
    return full[len(prompt) - 1 :].gather(-1, torch.tensor(answer).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("chunk_tokens", [1024, 2])
def test_answer_logps_match_naive_forward(tiny_model, share_prefix, chunk_tokens):
    model = load_model(tiny_model).eval()
    batch = collate(EXAMPLES, pad_id=0, share_prefix=share_prefix)
    with torch.no_grad():
        logps, _ = answer_token_logps(model, batch, chunk_tokens=chunk_tokens)
        for i, (prompt, answers) in enumerate(EXAMPLES):
            for j, answer in enumerate(answers):
                row = logps[i * 2 + j]
                assert_close(row[: len(answer)].double(), _naive_logps(model, prompt, answer), rtol=1e-4, atol=1e-5)
                assert torch.all(row[len(answer):] == 0)


@pytest.mark.parametrize("lora", [False, True])
def test_prefix_sharing_and_checkpointing_give_the_same_gradients(tiny_model, lora):
    """Shared prefix with gradient checkpointing (the default) against plain rows without it."""
    grads = {}
    for share, ckpt in ((True, True), (False, False)):
        torch.manual_seed(0)
        model = prepare_for_training(load_model(tiny_model), TrainConfig(lora=lora, lora_r=4, gradient_checkpointing=ckpt))
        model.train()
        if lora:
            for n, p in model.named_parameters():  # move B off zero so every LoRA weight gets a gradient
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.02)
        logps, _ = answer_token_logps(model, collate(EXAMPLES, pad_id=0, share_prefix=share))
        (logps.sum(-1) * torch.tensor([1.0, -1.0] * 3)).sum().backward()
        grads[share] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name in grads[True]:
        assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6, msg=name)


def test_num_tokens_counts_full_sequences_either_way():
    shared, plain = collate(EXAMPLES, 0, share_prefix=True), collate(EXAMPLES, 0, share_prefix=False)
    expected = sum(len(p) + len(a) for p, answers in EXAMPLES for a in answers)
    assert shared.num_tokens == plain.num_tokens == expected
    assert shared.input_ids.numel() < plain.input_ids.numel()


@pytest.mark.parametrize("lora", [True, False])
def test_vocabulary_projection_gradient_matches_autograd(tiny_model, lora):
    """The chunked projection's hand-written backward (the input gradient formed in forward when the
    projection is frozen, as with LoRA; recomputed logits when it trains, as in full fine-tuning,
    where it is tied to the embedding) must equal plain autograd through full logits."""
    grads = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = prepare_for_training(load_model(tiny_model), TrainConfig(lora=lora, lora_r=4, gradient_checkpointing=False))
        model.train()
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        batch = collate(EXAMPLES, pad_id=0)
        weights = torch.tensor([1.0, -1.0] * 3)
        if fused:
            logps, _ = answer_token_logps(model, batch, chunk_tokens=3)
            (logps.sum(-1) * weights).sum().backward()
        else:
            total = 0.0
            for i, (prompt, answers) in enumerate(EXAMPLES):
                for j, answer in enumerate(answers):
                    total = total + weights[2 * i + j] * _naive_logps(model, prompt, answer).sum()
            total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and ("model.embed_tokens.weight" in grads[0]) == (not lora)  # tied to lm_head
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name].float(), rtol=1e-3, atol=1e-5, msg=name)  # fp32 vs fp64 softmax


def test_packed_tokens_match_padded_rows(tiny_model):
    """Padding-free packing (the packed SDPA backend) gives the log-probs and gradients of padded
    rows (the eager backend keeps rows padded)."""
    results = []
    for backend in ("sdpa", "eager"):
        model = load_model(tiny_model)
        model.set_attn_implementation(backend)
        model.train()
        batch = collate(EXAMPLES, pad_id=0)
        assert batch.token_slot.numel() < batch.input_ids.numel()  # the batch does carry padding
        logps, _ = answer_token_logps(model, batch)
        (logps.sum(-1) * torch.tensor([1.0, -1.0] * 3)).sum().backward()
        results.append((model.config._attn_implementation, logps.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (packed, packed_logps, packed_grads), (padded, padded_logps, padded_grads) = results
    assert (packed, padded) == (PACKED_ATTENTION, "eager")
    assert_close(packed_logps, padded_logps, rtol=1e-5, atol=1e-5)
    for name, grad in packed_grads.items():
        assert_close(grad, padded_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_wpo_log_sum_sq_probs_match_naive_forward(tiny_model, share_prefix):
    """WPO's log sum_v p(v)^2 from the states the chunked forward ran on (packed or padded rows),
    against a plain full-logits computation on each unpadded sequence."""
    model = load_model(tiny_model).eval()
    batch = collate(EXAMPLES, pad_id=0, share_prefix=share_prefix)
    with torch.no_grad(), decoder_states(model) as states:
        answer_token_logps(model, batch)
    got = log_sum_sq_probs(model, batch, states[-1])
    for i, (prompt, answers) in enumerate(EXAMPLES):
        for j, answer in enumerate(answers):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].double()
            expected = torch.logsumexp(2 * torch.log_softmax(logits, -1), -1)
            assert_close(got[2 * i + j, : len(answer)].double(), expected, rtol=1e-4, atol=1e-5)
            assert torch.all(got[2 * i + j, len(answer):] == 0)


def test_ld_alpha_reference_precomputed_from_shared_answers_equals_the_per_token_split(tiny_model):
    """The precomputed reference stores summed log-probs only; a second table over the answers cut to
    their pair's shared length gives the shared sums (a causal model's first k answer tokens do not
    see the rest), so shared + alpha (full - shared) is LD-DPO's split of the per-token log-probs."""
    model = load_model(tiny_model).eval()
    full = compute_reference_logps(model, EXAMPLES, pad_id=0, batch_size=2)
    shared = compute_reference_logps(model, shared_part(EXAMPLES), pad_id=0, batch_size=2)
    batch = collate(EXAMPLES, pad_id=0)
    with torch.no_grad():
        tokens, _ = answer_token_logps(model, batch)
    expected = ld_weighted_sums(tokens, batch.answer_mask, 0.3).view(-1, 2)
    assert_close(shared + 0.3 * (full - shared), expected, rtol=1e-5, atol=1e-5)


def test_new_losses_and_modifiers_train_alike_with_a_precomputed_and_a_per_step_reference(tiny_model, tmp_path,
                                                                                         monkeypatch):
    """LD-DPO's reference from the cached tables and from the per-step split, WPO's weights through
    the trainer's forward, a sorting loss and a weighted mix: the two reference modes give the same
    losses, metrics and held-out metrics step after step."""
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))
    chat = [{"role": "user", "content": "Write one word in lowercase."}]
    rows = [{"prompt_id": f"p{i}", "prompt": chat, "chosen": [{"role": "assistant", "content": "calm " * (1 + i)}],
             "rejected": [{"role": "assistant", "content": "LOUD " * (1 + (5 * i) % 8)}], "score_chosen": 1.0,
             "score_rejected": 0.0} for i in range(8)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    runs = {
        "weighted": dict(loss_type=["apo_zero", "bco_pair", "discopop"], loss_weights=[1.0, 0.5, 0.5],
                         ld_alpha=0.5, use_weighting=True, discopop_tau=0.3),
        "sorted": dict(loss_type=["aot", "sft"], label_smoothing=0.1, ld_alpha=0.0),
    }
    for name, settings in runs.items():
        common = dict(lora=False, learning_rate=5e-3, max_steps=3, batch_size=2, warmup_ratio=0.0,
                      precision="fp32", eval_fraction=0.25, eval_steps=1, **settings)
        for mode in ("pre", "every"):
            train_dpo(DPOConfig(precompute_reference=mode == "pre", **common), tiny_model, [pairs],
                      tmp_path / name / mode)
        pre, every = ([json.loads(line) for line in (tmp_path / name / mode / "metrics.jsonl").read_text().splitlines()]
                      for mode in ("pre", "every"))
        assert pre[-1]["rewards/margins"] != pytest.approx(0.0, abs=1e-3)  # the policy moved off the reference
        for a, b in zip(pre, every, strict=True):
            assert set(a) == set(b) and "eval_loss" in a
            for key in a:
                if key not in ("train_runtime",):
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (name, key)


def test_two_processes_take_the_steps_of_one_with_the_new_losses_and_modifiers(tiny_model, tmp_path, monkeypatch):
    """Data parallelism: per-pair losses, WPO's per-pair weights and LD-DPO's precomputed reference
    tables (each process computes its share, all gather them) sum over processes as over
    micro-batches. (AOT is left out: it sorts each micro-batch, and the two runs group pairs apart.)"""
    inputs = {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 10)]}
    common = {"lora": True, "learning_rate": 5e-3, "batch_size": 2, "max_steps": 3, "warmup_ratio": 0.0,
              "precision": "fp32", "loss_type": ["apo_zero", "nca_pair", "sppo_hard"], "loss_weights": [1.0, 0.5, 0.1],
              "ld_alpha": 0.5, "use_weighting": True}
    _run("dpo", common | {"num_processes": 2}, inputs, tmp_path / "two", 2, monkeypatch)
    _run("dpo", common | {"grad_accum": 2}, inputs, tmp_path / "one", 1, monkeypatch)
    _assert_same_training(tmp_path / "one", tmp_path / "two")
