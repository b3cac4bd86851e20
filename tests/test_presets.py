"""Every deployment's preset parameters are valid for its flow: a typo or an out-of-range value in
``prefect.yaml`` fails here, not when a user starts the run from the UI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.exceptions import ParameterTypeError
from prefect.flows import load_flow_from_entrypoint

DEPLOYMENTS = yaml.safe_load((Path(__file__).parents[1] / "deployments" / "prefect.yaml").read_text())["deployments"]
PRESETS = [d for d in DEPLOYMENTS if "parameters" in d]  # the stage flows take their inputs from the user


@pytest.mark.parametrize("deployment", PRESETS, ids=[d["name"] for d in PRESETS])
def test_preset_parameters_validate_against_the_flow(deployment):
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    validated = flow.validate_parameters(deployment["parameters"])
    assert validated["model"] == deployment["parameters"]["model"]


def global_batch(p: dict) -> int:
    return p["batch_size"] * p.get("grad_accum", 1) * p.get("num_processes", 1)


def test_multi_gpu_preset_trains_data_parallel_with_the_one_gpu_global_batch():
    by_name = {d["name"]: d["parameters"] for d in PRESETS}
    one, many = by_name["7b-one-gpu"], by_name["7b-multi-gpu"]
    for stage in ("sft", "dpo"):
        assert many[stage]["num_processes"] > 1
        assert global_batch(many[stage]) == global_batch(one[stage])


def test_full_fsdp_preset_is_zephyrs_recipe_sharded_over_8_gpus():
    """alignment-handbook zephyr-7b-beta: DPO at beta 0.01, lr 5e-7, 1 epoch, global batch 128;
    full fine-tunes in bf16, here sharded by FSDP over 8 processes, one per GPU."""
    flow = load_flow_from_entrypoint("flows/lifecycle.py:lifecycle")
    preset = {d["name"]: d["parameters"] for d in PRESETS}["7b-full-fsdp"]
    validated = flow.validate_parameters(preset)
    for stage in ("sft", "dpo"):
        cfg = validated[stage]
        assert (cfg.lora, cfg.sharding, cfg.num_processes, cfg.precision, cfg.epochs) == (False, "fsdp", 8, "bf16", 1)
        assert global_batch(preset[stage]) == 128
    assert (validated["dpo"].beta, validated["dpo"].learning_rate) == (0.01, 5e-7)
    assert validated["sft"].learning_rate == 2e-5


def test_gpu_presets_generate_with_vllm():
    for name in ("7b-one-gpu", "7b-multi-gpu", "7b-full-fsdp"):
        validated = load_flow_from_entrypoint("flows/lifecycle.py:lifecycle").validate_parameters(
            {d["name"]: d["parameters"] for d in PRESETS}[name])
        assert validated["feedback"].engine.name == validated["evaluation"].engine.name == "vllm", name


def test_a_bad_preset_value_is_refused():
    flow = load_flow_from_entrypoint("flows/lifecycle.py:lifecycle")
    with pytest.raises(ParameterTypeError, match="num_processes"):
        flow.validate_parameters({"dpo": {"num_processes": 0}})


def test_a_misspelt_field_is_refused_not_ignored():
    flow = load_flow_from_entrypoint("flows/lifecycle.py:lifecycle")
    with pytest.raises(ParameterTypeError, match="dpo.num_procesess"):
        flow.validate_parameters({"dpo": {"num_procesess": 8}})


def test_quality_deployment_is_the_quality_preset():
    from flows.presets import QUALITY

    flow = load_flow_from_entrypoint("flows/iterative.py:iterative")
    validated = flow.validate_parameters({d["name"]: d["parameters"] for d in PRESETS}["quality"])
    for name in ("data", "feedback", "rounds", "dpo"):
        assert validated[name] == QUALITY[name], name


def test_nightly_retraining_is_one_round_from_the_champion():
    flow = load_flow_from_entrypoint("flows/iterative.py:iterative")
    nightly = {d["name"]: d for d in PRESETS}["iterative-nightly"]
    validated = flow.validate_parameters(nightly["parameters"])
    assert (validated["start_from"], validated["rounds"].rounds) == ("champion", 1)
    assert nightly["schedules"][0]["cron"]
