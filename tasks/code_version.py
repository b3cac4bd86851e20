"""A cache-policy part that hashes the source of the modules a stage runs.

Prefect's TASK_SOURCE hashes only the task function's own lines; a change to the dpo_core code a
task calls must invalidate its cache too.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect.cache_policies import CachePolicy

from dpo_core.digest import code_version


@dataclass
class CodeVersion(CachePolicy):
    modules: tuple[str, ...] = ()

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str:
        return code_version(*self.modules)
