"""Every module imports: catches undefined names and broken imports before users do."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import dpo_core
import flows
import tasks

MODULES = sorted(
    m.name for pkg in (dpo_core, tasks, flows) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_dpo_core_imports_neither_prefect_nor_mlflow():
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, dpo_core\n"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(dpo_core.__path__, 'dpo_core.')]\n"
            "print(sorted(m for m in ('prefect', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
