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
