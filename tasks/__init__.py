"""Prefect tasks: each wraps one dpo_core stage and owns its MLflow child run and Prefect artifacts.

Prefect's persisted task results (the stage cache) live under ``DPO_HOME`` beside the outputs
they point to, so deleting the outputs also drops the cache. Set before Prefect loads its settings.
"""

import os
from pathlib import Path

os.environ.setdefault(
    "PREFECT_LOCAL_STORAGE_PATH", str(Path(os.environ.get("DPO_HOME", "outputs")).resolve() / "prefect-results")
)
