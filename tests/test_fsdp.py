"""Sharded training (FSDP2) on two CPU processes over gloo against one process accumulating two
micro-batches, as tests/test_distributed.py checks data parallelism: the same losses, metrics and
gradient norms at every step (the norm is taken over the DTensor shards) and the same final
weights, for a full fine-tune of DPO (tied head, uneven last step, held-out pairs, precomputed
reference) and of SFT (untied head), and for LoRA with the reference run every step; and a run
whose main process dies after its second checkpoint resumes from the sharded checkpoint to the
weights of an uninterrupted run.

Run as a script under torchrun (``torchrun --nproc-per-node 2 tests/test_fsdp.py JOB OUT STEP``),
this file trains DPO and crashes the main process after optimizer step STEP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import _assert_same_training, _metrics, _pairs, _run, _weights
from torch.testing import assert_close

from dpo_core.common.models import load_model, load_tokenizer

# full fine-tune DPO: 15 pairs, 2 held out, 13 trained in steps of 4 (the last step's one pair
# leaves the second process only a stand-in batch); a checkpoint every 2 of the 8 steps
DPO = {"lora": False, "learning_rate": 5e-3, "batch_size": 2, "epochs": 2, "warmup_ratio": 0.25,
       "eval_fraction": 0.1, "precision": "fp32", "save_steps": 2, "save_total_limit": 2}
SHARDED = {"num_processes": 2, "sharding": "fsdp"}


@pytest.fixture(scope="module")
def sharded_dpo(tiny_model, tmp_path_factory):
    """An uninterrupted two-process FSDP DPO run: its folder and the pairs it trained on."""
    tmp = tmp_path_factory.mktemp("fsdp-dpo")
    inputs = {"model": tiny_model, "pairs_paths": [_pairs(tmp, 15)]}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _run("dpo", DPO | SHARDED, inputs, tmp / "two", 2, monkeypatch)
    return tmp / "two", inputs


def test_sharded_dpo_takes_the_steps_of_one_process_accumulating(sharded_dpo, tmp_path, monkeypatch):
    two, inputs = sharded_dpo
    _run("dpo", DPO | {"grad_accum": 2}, inputs, tmp_path / "one", 1, monkeypatch)

    steps = _metrics(two)
    assert [s["step"] for s in steps] == list(range(1, 9)) and "eval_loss" in steps[-1]
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    _assert_same_training(tmp_path / "one", two)
    assert not (two / "checkpoints").exists()  # dropped once the stage's result was written
    saved = load_file(two / "model" / "model.safetensors")  # gathered whole: tied head saved once, as transformers does
    assert saved["model.embed_tokens.weight"].shape == (len(load_tokenizer(inputs["model"])), 32)
    model = load_model(str(two / "model"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert json.loads((two / "train_config.json").read_text())["resolved_precision"] == "fp32"


def test_sharded_full_fine_tune_sft_with_an_untied_head_matches_one_process(tiny_model, tmp_path, monkeypatch):
    """Answers of 1 to 6 words, so the processes' token counts differ every step; the untied head
    is a root parameter of its own, gathered for the answer-only projection."""
    untied = load_model(tiny_model)
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone() * 2)
    untied.save_pretrained(tmp_path / "untied")
    load_tokenizer(tiny_model).save_pretrained(tmp_path / "untied")
    chat = [{"role": "user", "content": "Answer in one short line."}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "messages": chat, "instructions": []}) + "\n"
                               for i in range(6)))
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps({"prompt_id": f"q{i}", "index": 0, "model": "m", "text": "short " * (1 + i),
                                         "n_tokens": 1 + i, "score": 1.0, "passed": []}) + "\n" for i in range(6)))
    inputs = {"model": str(tmp_path / "untied"), "prompts_path": str(prompts), "candidates_path": str(cands)}
    common = {"lora": False, "learning_rate": 1e-3, "max_steps": 3, "warmup_ratio": 0.0, "min_score": 1.0,
              "batch_size": 1, "precision": "fp32"}
    _run("sft", common | SHARDED, inputs, tmp_path / "two", 2, monkeypatch)
    _run("sft", common | {"grad_accum": 2}, inputs, tmp_path / "one", 1, monkeypatch)
    _assert_same_training(tmp_path / "one", tmp_path / "two")
    assert "lm_head.weight" in _weights(tmp_path / "two")


def test_sharded_lora_dpo_with_the_reference_run_every_step_matches_one_process(tiny_model, tmp_path, monkeypatch):
    """LoRA under FSDP: the adapter is sharded with the frozen weights it sits on, and the
    reference is the sharded policy with its adapter off."""
    inputs = {"model": tiny_model, "pairs_paths": [_pairs(tmp_path, 10)]}
    common = {"lora": True, "learning_rate": 5e-3, "batch_size": 2, "max_steps": 3, "warmup_ratio": 0.0,
              "precision": "fp32", "precompute_reference": False}
    _run("dpo", common | SHARDED, inputs, tmp_path / "two", 2, monkeypatch)
    _run("dpo", common | {"grad_accum": 2}, inputs, tmp_path / "one", 1, monkeypatch)
    _assert_same_training(tmp_path / "one", tmp_path / "two")
    one, two = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("one", "two"))
    assert set(one) == set(two) and any(k.endswith("lora_B.weight") for k in one)
    for name in one:
        assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)


def test_sharded_run_resumes_after_a_crash_to_the_same_weights(sharded_dpo, tmp_path, monkeypatch):
    straight, inputs = sharded_dpo
    out = tmp_path / "resumed"
    out.mkdir()
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache-resumed"))  # as _run sets it for the resumed run
    (out / "job.json").write_text(json.dumps({"config": DPO | SHARDED, "inputs": inputs}))
    crash = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                            __file__, str(out / "job.json"), str(out), "5"], capture_output=True, text=True)
    assert crash.returncode != 0 and "Crash: after step 5" in crash.stdout + crash.stderr
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-000002", "step-000004"]
    assert (checkpoints[-1] / "sharded" / ".metadata").exists()  # DCP's shards, one file per process
    assert len(list((checkpoints[-1] / "sharded").glob("*.distcp"))) == 2

    lines: list[str] = []
    _run("dpo", DPO | SHARDED, inputs, out, 2, monkeypatch, lines)
    assert any(line.startswith("resumed from the checkpoint of step 4 of ") for line in lines)
    a, b = _weights(straight), _weights(out)
    for name in a:
        assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert [m["loss"] for m in _metrics(out)] == pytest.approx([m["loss"] for m in _metrics(straight)])


def test_sharding_needs_several_processes():
    from dpo_core.train.config import SFTConfig

    with pytest.raises(ValueError, match="num_processes"):
        SFTConfig(sharding="fsdp")


class Crash(Exception):
    pass


def _train_then_crash(job_path: str, out_dir: str, crash_step: str) -> None:
    from dpo_core.train.config import DPOConfig
    from dpo_core.train.dpo.trainer import train_dpo

    job = json.loads(Path(job_path).read_text())

    def crash(step, total, metrics):  # called on the main process only; torchrun then stops the other
        if step == int(crash_step):
            raise Crash(f"after step {step}")

    train_dpo(DPOConfig(**job["config"]), job["inputs"]["model"], job["inputs"]["pairs_paths"], Path(out_dir), crash)


if __name__ == "__main__":
    _train_then_crash(*sys.argv[1:])
