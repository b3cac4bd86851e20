"""What every stage task shares: its cache policy, its output folder, and its Prefect artifacts."""

from __future__ import annotations

from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from dpo_core.common.code_version import code_version
from dpo_core.common.digest import digest_json
from dpo_core.common.protocol import is_transient
from tasks.plumbing.child import StageFailed
from tasks.plumbing.code_version import CodeVersion
from tasks.plumbing.settings import mlflow_ui_url, stage_dir

# A stage's cache key: its config, its inputs' digests and run ids, and the code version; never
# the parent MLflow run, which is new for every flow run.
STAGE_CACHE = (INPUTS - "parent_run_id") + TASK_SOURCE


def retry_transient(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn`` for every stage: retry a network fault or a child killed from
    outside; never bad data, a bad config or a bug, which would fail the same way again."""
    exc = state.data
    if isinstance(exc, StageFailed):
        return exc.retryable
    return isinstance(exc, BaseException) and is_transient(exc)


def stage_cache(entry: str):
    """STAGE_CACHE plus the version of the code ``entry`` (a dpo_core module) runs."""
    return STAGE_CACHE + CodeVersion(entry=entry)


def output_dir(stage: str, entry: str, *key_parts):
    """The stage's content-addressed folder: its inputs' digests and the version of its code."""
    return stage_dir(stage, digest_json([stage, code_version(entry), *key_parts]))


def publish(stage: str, run_id: str, experiment_id: str, markdown: str) -> None:
    """A markdown summary of the stage and a link to its MLflow run, as Prefect artifacts."""
    create_markdown_artifact(key=f"{stage}-summary", markdown=f"# {stage}\n\n{markdown}",
                             description=f"{stage} summary")
    create_link_artifact(key=f"{stage}-mlflow-run", link=f"{mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}",
                         link_text=f"MLflow run {run_id}")


def markdown_table(rows: dict[str, object]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)
