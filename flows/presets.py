"""Named parameter sets for the lifecycle flow.

``CPU_DEMO`` is the default: SmolLM2-135M-Instruct on 2 CPU cores in well under 30 minutes.
The GPU presets (7b-one-gpu, 7b-multi-gpu, 7b-full-fsdp) are deployments' parameters in
``deployments/prefect.yaml``.
"""

from __future__ import annotations

from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.inference.config import SamplingConfig
from dpo_core.train.config import DPOConfig, SFTConfig

CPU_DEMO = {
    "data": BuildConfig(max_train=64, max_eval=80),
    "feedback": FeedbackConfig(sampling=SamplingConfig(num_samples=4, max_new_tokens=128, temperature=0.9, batch_size=8)),
    "sft": SFTConfig(learning_rate=2e-4, epochs=2, batch_size=4, min_score=1.0),
    "dpo": DPOConfig(learning_rate=3e-4, epochs=2, batch_size=4, beta=0.1, eval_fraction=0.1),
    "evaluation": EvalConfig(max_new_tokens=128, batch_size=16),
    "gate": GateConfig(min_improvement=0.0, confidence=0.9),  # primary: verifiable/prompt_strict on the shipped set
}
