"""Prefect flows: compositions of the stage tasks."""

import tasks  # noqa: F401  (points Prefect's result storage under DPO_HOME before Prefect loads settings)
