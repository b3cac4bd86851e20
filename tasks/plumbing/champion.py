"""Task: fetch the registry's current champion so the evaluation can compare against it."""

from __future__ import annotations

from pathlib import Path

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from dpo_core.common.digest import digest_json
from tasks.plumbing.registry import CHAMPION, alias_version
from tasks.plumbing.results import ModelRef
from tasks.plumbing.settings import home, tracking_uri


@task(name="fetch-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fetch_champion_task(registered_model: str) -> ModelRef | None:
    """The champion's checkpoint as a local folder (downloaded once per version), or None."""
    version = alias_version(registered_model, CHAMPION)
    if version is None:
        return None
    dest = home() / "registry" / registered_model / str(version.version)
    if not dest.exists():
        mlflow.set_tracking_uri(tracking_uri())
        mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest))
    config = next(Path(dest).rglob("config.json"))
    return ModelRef(model_path=str(config.parent), digest=digest_json([registered_model, version.version, version.source]),
                    run_id=version.run_id or "", model_uri=f"models:/{registered_model}/{version.version}")
