"""Task: supervised fine-tuning on the best candidates, in a child process."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task

from dpo_core.common.models import model_fingerprint, resolve_model
from dpo_core.train.config import SFTConfig
from tasks.plumbing.results import DatasetRef, FeedbackRef, ModelRef
from tasks.plumbing.stage import output_dir, retry_transient, stage_cache
from tasks.plumbing.training import train_in_child

STAGE, ENTRY = "sft", "dpo_core.train.sft"  # ENTRY's import closure is the code version in the cache key


@task(name=STAGE, cache_policy=stage_cache(ENTRY), persist_result=True, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_transient)
def sft_task(
    cfg: SFTConfig, model: str, data: DatasetRef, feedback: FeedbackRef | None, parent_run_id: str,
    timeout_s: float | None = None,
) -> ModelRef:
    """Fine-tune ``model`` on the team's conversations or pairs (``data``) and, when feedback ran
    first, the teacher's or the best candidates."""
    fingerprint = model_fingerprint(resolve_model(model))
    out = output_dir(STAGE, ENTRY, asdict(cfg), fingerprint, data.digest, feedback and feedback.digest)
    inputs = {"model": model, "conversations_path": data.sft_path, "pairs_paths": [data.pairs_path] if data.pairs_path else [],
              "prompts_path": data.train_path, "candidates_path": feedback.candidates_path if feedback else None}
    params = asdict(cfg) | {"model": model, "model_fingerprint": fingerprint}
    return train_in_child(STAGE, cfg, inputs, out, parent_run_id, params, timeout_s)
