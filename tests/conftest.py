"""Shared fixtures: an isolated DPO_HOME, tiny random models (chat and base), and one real temporary Prefect server.

Environment variables are set at import time, before Prefect or the tasks package load settings.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="dpo-tests-"))
os.environ["DPO_HOME"] = str(_SESSION_HOME / "home")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_HOME / "home" / "prefect-results")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# engine "auto" runs the tiny models with transformers; tests/test_vllm.py asks for vLLM by name
os.environ["DPO_PIPELINE_ENGINE"] = "local"
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from tiny import make_tiny_model

    return str(make_tiny_model(_SESSION_HOME / "tiny-model"))


@pytest.fixture(scope="session")
def tiny_base_model() -> str:
    """A tiny base model whose tokenizer has no chat template (and no ChatML tokens)."""
    from tiny import make_tiny_base_model

    return str(make_tiny_base_model(_SESSION_HOME / "tiny-base-model"))


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
