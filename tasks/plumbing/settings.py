"""Where the pipeline keeps its state: one home folder, overridable per user or test."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """``DPO_HOME`` (default ``./outputs``): stage outputs, the MLflow store and artifacts."""
    return Path(os.environ.get("DPO_HOME", "outputs")).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set (a team server), else a SQLite store in the home folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def mlflow_ui_url() -> str:
    """Base address used for links from Prefect artifacts to MLflow runs."""
    return os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5000")


def stage_dir(stage: str, key: str) -> Path:
    """Content-addressed output folder: the same inputs and config always land in the same place."""
    return home() / "stages" / stage / key
