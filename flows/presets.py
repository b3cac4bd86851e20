"""Named parameter sets for the lifecycle and iterative flows.

``CPU_DEMO`` is the lifecycle's default: SmolLM2-135M-Instruct on 2 CPU cores in well under 30
minutes. ``ITERATIVE_DEMO`` is the iterative flow's: 3 rounds of 64 fresh prompts each. ``QUALITY``
trades time for gain: every training prompt, best-of-8 candidates, 3 rounds.
The GPU presets (7b-one-gpu, 7b-multi-gpu, 7b-full-fsdp) are deployments' parameters in
``deployments/prefect.yaml``.
"""

from __future__ import annotations

from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.inference.config import SamplingConfig
from dpo_core.iterative import RoundsConfig
from dpo_core.train.config import DPOConfig, SFTConfig

CPU_DEMO = {
    "data": BuildConfig(max_train=64, max_eval=80),
    "feedback": FeedbackConfig(sampling=SamplingConfig(num_samples=4, max_new_tokens=128, temperature=0.9, batch_size=8)),
    "sft": SFTConfig(learning_rate=2e-4, epochs=2, batch_size=4, min_score=1.0),
    "dpo": DPOConfig(learning_rate=3e-4, epochs=2, batch_size=4, beta=0.1, eval_fraction=0.1),
    "evaluation": EvalConfig(max_new_tokens=128, batch_size=16),
    "gate": GateConfig(min_improvement=0.0, confidence=0.9),  # primary: verifiable/prompt_strict on the shipped set
}

# Iterative RPO's loss: DPO plus the NLL of the chosen answer, which the paper found crucial
RPO = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}

ITERATIVE_DEMO = {
    "data": BuildConfig(max_train=192, max_eval=80),  # 64 fresh prompts per round
    "rounds": RoundsConfig(rounds=3),
    "feedback": FeedbackConfig(binarize="best_vs_worst",
                               sampling=SamplingConfig(num_samples=4, max_new_tokens=128, temperature=0.9, batch_size=8)),
    "dpo": DPOConfig(learning_rate=3e-4, epochs=2, batch_size=4, beta=0.1, eval_fraction=0.1, **RPO),
    "evaluation": CPU_DEMO["evaluation"],
    "gate": CPU_DEMO["gate"],
}

QUALITY = ITERATIVE_DEMO | {
    "data": BuildConfig(max_eval=80),  # every training prompt: about 113 per round
    "feedback": FeedbackConfig(binarize="best_vs_worst",
                               sampling=SamplingConfig(num_samples=8, max_new_tokens=128, temperature=0.9, batch_size=8)),
}
