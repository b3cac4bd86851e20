"""Task: direct preference optimization of the SFT model, in a child process."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task

from dpo_core.train.config import DPOConfig
from tasks.plumbing.results import DatasetRef, FeedbackRef, ModelRef
from tasks.plumbing.stage import output_dir, retry_transient, stage_cache
from tasks.plumbing.training import train_in_child

STAGE, ENTRY = "dpo", "dpo_core.train.dpo.trainer"  # ENTRY's import closure is the code version in the cache key


@task(name=STAGE, cache_policy=stage_cache(ENTRY), persist_result=True, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_transient)
def dpo_task(
    cfg: DPOConfig, policy: ModelRef, feedback: FeedbackRef | None, parent_run_id: str,
    timeout_s: float | None = None, data: DatasetRef | None = None, reference: ModelRef | None = None,
) -> ModelRef:
    """Train ``policy`` on the collected pairs and the team's own (``data``), against ``reference``
    (default: the policy it starts from)."""
    pairs = [p for p in (feedback and feedback.pairs_path, data and data.pairs_path) if p]
    out = output_dir(STAGE, ENTRY, asdict(cfg), policy.digest, feedback and feedback.digest, data and data.digest,
                      reference and reference.digest)
    inputs = {"model": policy.model_path, "pairs_paths": pairs, "reference_model": reference and reference.model_path}
    params = asdict(cfg) | {"policy_model_uri": policy.model_uri or policy.model_path,
                            "reference_model_uri": (reference or policy).model_uri or (reference or policy).model_path}
    return train_in_child(STAGE, cfg, inputs, out, parent_run_id, params, timeout_s)
