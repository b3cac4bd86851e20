"""The evaluation stage's config: held-out answers, the judge's benchmarks, lm-eval tasks.

Free of torch, so it loads in Prefect's flow process and the UI's forms without a model stack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dpo_core.common.config import config_dataclass


@config_dataclass
class EvalConfig:
    max_prompts: int | None = Field(None, ge=1, description="Evaluate on at most this many held-out prompts")
    max_new_tokens: int = Field(160, ge=1, description="Longest greedy answer; 160 fits the shipped prompts' "
                                                       "length limits")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call (greedy decoding)")
    judge: str | None = Field(None, description="local:<model ref> or openai:<base_url>|<model>: enables MT-Bench "
                                                "grading and the pairwise win rate")
    mt_bench_path: str | None = Field(None, description="MT-Bench-format questions (JSONL) graded by the judge")
    pairwise_baseline: Literal["base", "sft", "champion"] = Field(
        "sft", description="The model the judge compares the DPO model with")
    judge_max_new_tokens: int = Field(192, ge=8, description="Longest judge answer: a short explanation and the "
                                                             "rating or verdict")
    judge_max_retries: int = Field(2, ge=0, le=10, description="Re-asks of an unparseable judge answer, with the "
                                                               "problem named, before it counts as a parse failure")
    lm_eval_tasks: list[str] = Field(default_factory=list, description="lm-evaluation-harness tasks (package needed)")
    lm_eval_limit: int | None = Field(None, ge=1, description="Examples per lm-eval task (all when unset)")

    def __post_init__(self):
        if self.mt_bench_path and not self.judge:
            raise ValueError(f"mt_bench_path={self.mt_bench_path!r} is graded by a judge: set judge too")
