"""Every model load goes through dpo_core.common.models' placement helper, and inputs follow the model.

The helper is made to report the "meta" device, which CPU-only torch has and which no loader
would pick by itself, and a float16 inference dtype, which nothing here saves: a loader that goes
through ``load_model``/``place`` hands back a model on meta (in float16 when it loads for
inference, float32 when for training), one that calls ``from_pretrained`` itself a model on the
CPU. A meta model cannot compute, so each loader is stopped at the first call that would run it
(``generate``, ``prepare_for_training``), which hands the model over.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dpo_core.common import models
from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.models import compute_device, inference_dtype, load_model, load_tokenizer
from dpo_core.common.records import PreferencePair, PromptRecord
from dpo_core.evaluate import stage
from dpo_core.evaluate.benchmarks import preference
from dpo_core.evaluate.config import EvalConfig
from dpo_core.feedback import generators
from dpo_core.inference import backends, generation
from dpo_core.inference.config import ClientOptions, SamplingConfig
from dpo_core.judges.reward_model import RewardModelJudge
from dpo_core.train import sft
from dpo_core.train.config import DPOConfig, SFTConfig
from dpo_core.train.dpo import trainer

SPY_DEVICE = torch.device("meta")
SPY_INFERENCE_DTYPE = torch.float16
CHAT = [{"role": "user", "content": "Write one word."}]


class Seen(Exception):
    """Raised by a stand-in for the first call that would run the model; carries the model."""

    def __init__(self, model):
        super().__init__("model handed over")
        self.model = model


def _stop(model, *args, **kwargs):
    raise Seen(model)


def _seen(call) -> torch.nn.Module:
    with pytest.raises(Seen) as stopped:
        call()
    return stopped.value.model


@pytest.fixture()
def spy_placement(monkeypatch):
    monkeypatch.setattr(models, "compute_device", lambda: SPY_DEVICE)
    monkeypatch.setattr(models, "inference_dtype", lambda device: SPY_INFERENCE_DTYPE)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> str:
    from tiny import make_tiny_reward_model

    return str(make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "model"))


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory):
    rows = [{"prompt_id": f"p{i}", "prompt": CHAT, "chosen": [{"role": "assistant", "content": f"calm {i}"}],
             "rejected": [{"role": "assistant", "content": f"LOUD {i}"}], "score_chosen": 1.0, "score_rejected": 0.0}
            for i in range(4)]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def eval_path(tmp_path_factory):
    """One held-out prompt with a verifiable instruction: the checks can score it without a judge."""
    prompt = PromptRecord("e-0", CHAT, [{"kind": "lowercase", "args": {}}])
    return write_jsonl(tmp_path_factory.mktemp("eval") / "eval.jsonl", [prompt.to_dict()])


# Each loader: (how it loads for, a function of (paths, monkeypatch) returning the model it loaded).
def _policy(p, mp):
    return load_model(p.tiny)


def _sft_trainer(p, mp):
    mp.setattr(sft, "prepare_for_training", _stop)
    return _seen(lambda: sft.train_sft(SFTConfig(max_steps=1), p.tiny, p.out, pairs_paths=[p.pairs]))


def _dpo_trainer(p, mp):
    mp.setattr(trainer, "prepare_for_training", _stop)
    return _seen(lambda: trainer.train_dpo(DPOConfig(max_steps=1), p.tiny, [p.pairs], p.out))


def _reward_judge(p, mp):
    return RewardModelJudge(p.reward).model


def _local_chat_judge(p, mp):
    return backends.make_backend(f"local:{p.tiny}").model


def _local_generator(p, mp):
    mp.setattr(generators, "generate", _stop)
    local = generators.make_generator(f"local:{p.tiny}", ClientOptions())
    return _seen(lambda: local.run([(CHAT, 0)], SamplingConfig(num_samples=1), lambda i, s: None))


def _test_server(p, mp):
    import chat_app  # tests/: the transformers chat server the fault-injection tests wrap
    from fastapi.testclient import TestClient

    mp.setattr(chat_app, "generate", _stop)
    client = TestClient(chat_app.create_app(p.tiny))  # re-raises the app's exception
    return _seen(lambda: client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}))


def _evaluation(p, mp):
    mp.setattr(backends, "generate", _stop)  # the stage answers through LocalChat
    return _seen(lambda: stage.evaluate(EvalConfig(), {"dpo": p.tiny}, p.eval, p.out))


LOADERS = {
    "policy load_model": ("training", _policy),
    "SFT trainer": ("training", _sft_trainer),
    "DPO trainer": ("training", _dpo_trainer),
    "reward-model judge": ("inference", _reward_judge),
    "local chat judge": ("inference", _local_chat_judge),
    "local generator": ("inference", _local_generator),
    "test server": ("inference", _test_server),
    "evaluate stage": ("inference", _evaluation),
}


def _load(name, tiny_model, reward_model, pairs_path, eval_path, tmp_path, monkeypatch):
    paths = SimpleNamespace(tiny=tiny_model, reward=reward_model, pairs=pairs_path, eval=eval_path, out=tmp_path)
    return LOADERS[name][1](paths, monkeypatch)


@pytest.mark.parametrize("name", LOADERS)
def test_every_loader_places_its_model_where_the_helper_says(name, tiny_model, reward_model, pairs_path, eval_path,
                                                             tmp_path, monkeypatch, spy_placement):
    model = _load(name, tiny_model, reward_model, pairs_path, eval_path, tmp_path, monkeypatch)
    devices = {p.device for p in model.parameters()}
    assert devices == {SPY_DEVICE}, f"{name} put its model on {devices}, not where compute_device() says"


@pytest.mark.parametrize("name", LOADERS)
def test_inference_loads_take_the_inference_dtype_and_training_loads_float32(
        name, tiny_model, reward_model, pairs_path, eval_path, tmp_path, monkeypatch, spy_placement):
    purpose, _ = LOADERS[name]
    model = _load(name, tiny_model, reward_model, pairs_path, eval_path, tmp_path, monkeypatch)
    expected = SPY_INFERENCE_DTYPE if purpose == "inference" else torch.float32  # the tiny models are saved in fp32
    assert model.dtype == expected, (
        f"{name} loads for {purpose} in {model.dtype}, expected {expected}"
        + (": pass inference=True to load_model" if purpose == "inference" else ""))


def test_compute_device_is_the_local_ranks_gpu_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert compute_device() == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")  # the fourth process of a launcher on this machine
    assert compute_device() == torch.device("cuda", 3)


def test_inference_dtype_is_bf16_on_a_gpu_that_has_it_else_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert inference_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_dtype(torch.device("cuda", 0)) == torch.float32


# Inputs follow the model: a stand-in that reports the meta device notes where its inputs are.
class _MetaModel:
    device = SPY_DEVICE

    def __init__(self, eos_id: int = 0):
        self.generation_config = SimpleNamespace(eos_token_id=eos_id)
        self.input_devices: set[torch.device] = set()

    def eval(self):
        return self

    def __call__(self, **inputs):  # a reward model's forward: one logit per row
        self.input_devices |= {t.device for t in inputs.values()}
        return SimpleNamespace(logits=torch.zeros(len(inputs["input_ids"]), 1))

    def generate(self, input_ids, attention_mask, eos_token_id, **kwargs):  # ends every turn at once
        self.input_devices |= {input_ids.device, attention_mask.device}
        return torch.full((input_ids.shape[0], input_ids.shape[1] + 1), eos_token_id[0])  # (B, T + 1), on the CPU


def test_generate_moves_its_inputs_to_the_model(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    model = _MetaModel(tokenizer.eos_token_id)
    generation.generate(model, tokenizer, [CHAT, [{"role": "user", "content": "Name a colour."}]],
                        SamplingConfig(num_samples=1, temperature=0.0))
    assert model.input_devices == {SPY_DEVICE}


def test_the_reward_judge_moves_its_inputs_to_the_model(reward_model):
    judge = RewardModelJudge(reward_model)
    judge.model = _MetaModel()
    assert judge.rewards([CHAT + [{"role": "assistant", "content": "hi"}]]) == [0.0]
    assert judge.model.input_devices == {SPY_DEVICE}


def test_heldout_log_probs_move_their_batches_to_the_model(tiny_model, pairs_path, monkeypatch):
    devices = []

    def fake_pair_logps(model, batch):  # (B, 2) summed log-probs of [chosen, rejected]
        devices.append(batch.input_ids.device)
        return torch.zeros(len(batch.input_ids), 2)

    monkeypatch.setattr(preference, "pair_logps", fake_pair_logps)
    pairs = [PreferencePair(**r) for r in read_jsonl(pairs_path)]
    logps, _ = preference.summed_logps(_MetaModel(), load_tokenizer(tiny_model), pairs, 128, batch_size=3)
    assert devices == [SPY_DEVICE, SPY_DEVICE] and logps.shape == (4, 2)  # 4 pairs in batches of 3
