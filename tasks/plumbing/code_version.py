"""A cache-policy part that hashes the code a stage runs.

Prefect's TASK_SOURCE hashes only the task function's own lines; a change to any dpo_core module
the stage imports, directly or not, must invalidate its cache too (dpo_core.common.code_version).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.cache_policies import CachePolicy

from dpo_core.common.code_version import code_version


@dataclass
class CodeVersion(CachePolicy):
    entry: str = ""  # the stage's dpo_core module, e.g. "dpo_core.train.sft"

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str:
        return code_version(self.entry)
