"""Stage configs: every field documented, fields that would do nothing refused, no torch to load them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.inference.config import ClientOptions, SamplingConfig
from dpo_core.train.config import DPOConfig, SFTConfig, TrainConfig

CONFIGS = [BuildConfig, SamplingConfig, ClientOptions, FeedbackConfig, TrainConfig, SFTConfig, DPOConfig, EvalConfig,
           GateConfig]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_described(config):
    undocumented = [name for name, info in config.__pydantic_fields__.items() if not info.description]
    assert undocumented == []


@pytest.mark.parametrize(("make", "field"), [
    (lambda: DPOConfig(label_smoothing=0.1), "label_smoothing"),
    (lambda: DPOConfig(loss_type=["sigmoid", "sft"], label_smoothing=0.1), "label_smoothing"),
    (lambda: DPOConfig(simpo_gamma=0.3), "simpo_gamma"),
    (lambda: DPOConfig(loss_type=["apo_zero"], label_smoothing=0.1), "label_smoothing"),
    (lambda: DPOConfig(loss_type=["exo_pair"]), "label_smoothing"),  # EXO's log eps needs eps > 0, as TRL says
    (lambda: DPOConfig(discopop_tau=0.1), "discopop_tau"),
    (lambda: DPOConfig(f_alpha_divergence_coef=0.3), "f_alpha_divergence_coef"),
    (lambda: DPOConfig(f_divergence_type="forward_kl", f_alpha_divergence_coef=0.3), "f_alpha_divergence_coef"),
    (lambda: DPOConfig(loss_type=["apo_zero"], f_divergence_type="js_divergence"), "f_divergence_type"),  # as TRL
    (lambda: DPOConfig(loss_type=["sigmoid", "nca_pair"], f_divergence_type="forward_kl"), "f_divergence_type"),
    (lambda: DPOConfig(loss_type=["simpo", "sft"], f_divergence_type="forward_kl"), "f_divergence_type"),  # no ref
    (lambda: DPOConfig(loss_type=["sft"], ld_alpha=0.5), "ld_alpha"),
    (lambda: DPOConfig(ld_alpha=1.5), "ld_alpha"),
    (lambda: DPOConfig(loss_type=["aot"], use_weighting=True), "use_weighting"),  # as TRL: sorted, no pair's own
    (lambda: DPOConfig(loss_type=["sigmoid", "sft"], use_weighting=True), "use_weighting"),
    (lambda: DPOConfig(use_weighting=True, sharding="fsdp", num_processes=2), "use_weighting"),
    (lambda: DPOConfig(loss_type=["aot_unpaired"], batch_size=1), "batch_size"),
    (lambda: DPOConfig(loss_type=["dpo"]), "loss_type"),
    (lambda: DPOConfig(eval_steps=5), "eval_steps"),
    (lambda: SFTConfig(eval_steps=5), "eval_steps"),
    (lambda: EvalConfig(mt_bench_path="questions.jsonl"), "mt_bench_path"),
    (lambda: FeedbackConfig(generators=["openai:|gpt-4o"]), "generators"),  # an empty base URL
    (lambda: FeedbackConfig(generators=["opnai:http://127.0.0.1:8000/v1|m"]), "unknown prefix 'opnai'"),
    (lambda: FeedbackConfig(generators=["local:"]), "generators"),
    (lambda: FeedbackConfig(judge="rubric:opnai:http://127.0.0.1:8000/v1|m"), "judge rubric:"),
    (lambda: FeedbackConfig(judge="pairwise:openai:http://127.0.0.1:8000/v1|"), "judge pairwise:"),
    (lambda: FeedbackConfig(judge="rubric"), "judge 'rubric'"),
    (lambda: EvalConfig(judge="openai:http://127.0.0.1:8000/v1"), "evaluation.judge"),  # no model name
    (lambda: EvalConfig(judge="./judge-model"), "evaluation.judge"),  # needs local: or openai:
    (lambda: EvalConfig(reward_model="rm:./x"), "evaluation.reward_model"),
])
def test_a_field_that_would_do_nothing_is_an_error_naming_it(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_the_same_fields_are_accepted_where_they_are_read():
    assert DPOConfig(loss_type=["robust"], label_smoothing=0.1).label_smoothing == 0.1
    assert DPOConfig(loss_type=["cdpo"], label_smoothing=0.1).label_smoothing == 0.1
    assert DPOConfig(loss_type=["simpo"], simpo_gamma=0.3).simpo_gamma == 0.3
    assert DPOConfig(loss_type=["exo_pair"], label_smoothing=1e-3).label_smoothing == 1e-3
    assert DPOConfig(loss_type=["aot", "sft"], label_smoothing=0.1, use_weighting=False).label_smoothing == 0.1
    assert DPOConfig(loss_type=["discopop"], discopop_tau=0.1).discopop_tau == 0.1
    assert DPOConfig(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3).f_alpha_divergence_coef == 0.3
    assert DPOConfig(loss_type=["sigmoid", "simpo", "sft"], f_divergence_type="js_divergence").f_divergence_type
    assert DPOConfig(loss_type=["ipo", "sft"], ld_alpha=0.5).ld_alpha == 0.5  # precomputed reference too
    assert DPOConfig(loss_type=["apo_zero", "bco_pair"], use_weighting=True, precompute_reference=False).use_weighting
    assert DPOConfig(ld_alpha=0.5, use_weighting=True, sync_ref_model=True, precompute_reference=False).ld_alpha
    assert DPOConfig(eval_steps=5, eval_fraction=0.1).eval_steps == 5
    assert EvalConfig(mt_bench_path="questions.jsonl", judge="local:x").judge == "local:x"
    specs = ["embedded:smollm2-135m-instruct", "./my-model", "HuggingFaceH4/zephyr-7b-beta", "local:./m",
             "openai:http://127.0.0.1:8000/v1|my-model"]
    assert FeedbackConfig(generators=specs, judge="rubric:openai:https://api.example.com/v1|judge").generators == specs


def test_configs_child_protocol_and_flows_load_without_torch():
    """Prefect's flow process, `prefect deploy` and the UI's forms read configs and relay the child's
    progress; none of that may pay for loading torch and transformers."""
    code = ("import sys\n"
            "import dpo_core.train.config, dpo_core.feedback.config, dpo_core.evaluate.config, dpo_core.inference.config\n"
            "import dpo_core.evaluate.gate, dpo_core.data.build_dataset, dpo_core.common.protocol\n"
            "import flows.lifecycle, flows.iterative, flows.sft, flows.dpo, flows.evaluate, flows.collect_feedback\n"
            "import flows.build_dataset, dpo_core.iterative\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
