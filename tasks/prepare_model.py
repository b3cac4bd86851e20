"""Task: check the base model has a chat template, or give it one (the ``chat_template`` setting),
before any stage works: a base model otherwise fails only inside a later stage.

Not cached by Prefect: a folder retrained in place must be seen, and the child fingerprints the
weights and reuses a templated folder it already built, so a re-run costs one short process.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.plumbing.child import run_stage_in_child
from tasks.plumbing.stage import output_dir, retry_transient

STAGE, ENTRY = "prepare-model", "dpo_core.common.templates"


@task(name=STAGE, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient)
def prepare_model_task(model: str, chat_template: str | None = None) -> str:
    """The model reference every later stage uses: ``model``, or its folder with the template."""
    out = output_dir(STAGE, ENTRY, model, chat_template)
    job = {"config": {"chat_template": chat_template}, "inputs": {"model": model}}
    return run_stage_in_child(STAGE, job, out, get_run_logger().info)["model_path"]
