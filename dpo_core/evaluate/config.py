"""The evaluation stage's config: held-out answers, what scores them, the judge's benchmarks, lm-eval tasks.

Held-out prompts with verifiable instructions are scored by the checks; prompts without them need
``judge`` or ``reward_model`` (a held-out set where nothing could score any prompt is refused
before a model runs: dpo_core.evaluate.heldout).

Free of torch, so it loads in Prefect's flow process and the UI's forms without a model stack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dpo_core.common.config import config_dataclass
from dpo_core.inference.config import EngineConfig, check_model_spec


@config_dataclass
class EvalConfig:
    max_prompts: int | None = Field(None, ge=1, description="Evaluate on at most this many held-out prompts")
    max_new_tokens: int = Field(160, ge=1, description="Longest greedy answer; 160 fits the shipped prompts' "
                                                       "length limits")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call (greedy decoding)")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="What runs the evaluated models and a "
                                                                           "vllm: judge")
    judge: str | None = Field(None, description="local:<model ref>, vllm:<model ref> or openai:<base_url>|<model>: "
                                                "grades every model's held-out answers 1-10 (MT-Bench single grading), compares "
                                                "the DPO model's with each win_rate_baselines model's, and grades "
                                                "mt_bench_path")
    reward_model: str | None = Field(None, description="A local sequence-classification reward model (folder or hub "
                                                       "id, one logit): the mean reward of every model's held-out "
                                                       "answers and the DPO model's reward win rates")
    mt_bench_path: str | None = Field(None, description="MT-Bench-format questions (JSONL) graded by the judge")
    win_rate_baselines: list[Literal["base", "sft", "champion"]] = Field(
        default_factory=lambda: ["base", "champion"],
        description="The models the DPO model's held-out answers are compared with, answer by answer, by the judge "
                    "(pairwise) and the reward model; champion only when the registry has one. The gate compares "
                    "with the champion, or base before there is one")
    judge_max_new_tokens: int = Field(192, ge=8, description="Longest judge answer: a short explanation and the "
                                                             "rating or verdict")
    judge_max_retries: int = Field(2, ge=0, le=10, description="Re-asks of an unparseable judge answer, with the "
                                                               "problem named, before it counts as a parse failure")
    lm_eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks (package needed)")
    lm_eval_limit: int | None = Field(None, ge=1, description="Examples per lm-eval task (all when unset)")

    def __post_init__(self):
        if self.mt_bench_path and not self.judge:
            raise ValueError(f"mt_bench_path={self.mt_bench_path!r} is graded by a judge: set judge too")
        if self.judge is not None:
            check_model_spec(self.judge, "evaluation.judge", bare=False)
        if self.reward_model is not None:
            check_model_spec(self.reward_model, "evaluation.reward_model")
