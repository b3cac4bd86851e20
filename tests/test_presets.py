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


def test_multi_gpu_preset_trains_data_parallel_with_the_one_gpu_global_batch():
    by_name = {d["name"]: d["parameters"] for d in PRESETS}
    one, many = by_name["7b-one-gpu"], by_name["7b-multi-gpu"]
    for stage in ("sft", "dpo"):
        assert many[stage]["num_processes"] > 1

        def global_batch(p):
            return p["batch_size"] * p.get("grad_accum", 1) * p.get("num_processes", 1)

        assert global_batch(many[stage]) == global_batch(one[stage])


def test_a_bad_preset_value_is_refused():
    flow = load_flow_from_entrypoint("flows/lifecycle.py:lifecycle")
    with pytest.raises(ParameterTypeError, match="num_processes"):
        flow.validate_parameters({"dpo": {"num_processes": 0}})


def test_a_misspelt_field_is_refused_not_ignored():
    flow = load_flow_from_entrypoint("flows/lifecycle.py:lifecycle")
    with pytest.raises(ParameterTypeError, match="dpo.num_procesess"):
        flow.validate_parameters({"dpo": {"num_procesess": 8}})
