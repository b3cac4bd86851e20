"""The dpo-pipeline command: every command documents its options, and runs its flow with them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flows.cli import COMMANDS, main


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_listing_its_settings(command):
    out = subprocess.run([sys.executable, "-m", "flows.cli", command, "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(f"usage: dpo-pipeline {command}")
    assert "Args:" in out  # the flow's own documentation
    if command != "build-dataset":
        assert "--stage_timeout_s" in out


def test_config_fields_are_options_with_their_descriptions():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "lifecycle", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--dpo.beta" in out and "KL anchor" in out
    assert "--feedback.sampling.num_samples" in out  # nested configs too


def test_a_bad_setting_is_named_before_anything_runs(capsys):
    with pytest.raises(SystemExit, match="label_smoothing"):
        main(["dpo", "--model", "m", "--feedback", "f", "--dpo.label_smoothing", "0.1"])


def test_build_dataset_runs_from_the_command_line(prefect_server, capsys):
    main(["build-dataset", "--data.max_train", "5", "--data.max_eval", "3", "--data.seed", "7"])
    out = capsys.readouterr().out
    (ref,) = json.loads(out[out.rindex("[\n  {"):])
    assert ref["counts"]["train"] == 5 and ref["counts"]["eval"] == 3
    with open(ref["train_path"]) as f:
        assert len(f.readlines()) == 5


def test_evaluating_one_model_answers_each_prompt_once(prefect_server, tiny_model, tmp_path, capsys):
    """A prompts file in TRL's prompt shape, two rows broken: the model answers each good prompt once."""
    prompts = tmp_path / "heldout.jsonl"
    rows = [{"prompt": f"Write about topic {i}. Answer in lowercase letters only.",
             "instructions": [{"kind": "lowercase", "args": {}}]} for i in range(4)]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n" + json.dumps({"prompt": ""}) + "\n")
    main(["evaluate-model", "--model", tiny_model, "--prompts", str(prompts), "--evaluation.max_new_tokens", "8"])
    out = capsys.readouterr().out
    assert "verifiable/prompt_strict" in out and "MLflow store:" in out
    samples_path = next(line.split()[-1] for line in out.splitlines() if line.startswith("Samples:"))
    with open(samples_path) as f:
        samples = [json.loads(line) for line in f]
    assert sorted(s["prompt_id"] for s in samples) == sorted({s["prompt_id"] for s in samples})  # once each
    assert len(samples) == 4 and {s["model"] for s in samples} == {"model"}


@pytest.mark.parametrize("module", ["flows.lifecycle", "flows.evaluate"])
def test_each_flow_module_is_the_same_command(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"usage: dpo-pipeline {module.split('.')[1]}")
