"""A stage's code version: the digest of every ``dpo_core`` module it imports, directly or not.

Part of each stage's cache key, so an edit to any code a stage runs re-runs that stage, and an
edit to code it never imports leaves its cache alone. Imports are read from the source with
``ast``, never executed, and lazy imports inside functions count too. (The stdlib's
``modulefinder`` would also walk torch and transformers, for minutes.)
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "dpo_core"
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds dpo_core/


def module_file(name: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The source file of dotted module ``name`` under ``root``, or None if it is not a module there."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def direct_imports(name: str, root: Path = SOURCE_ROOT) -> set[str]:
    """The ``dpo_core`` modules that module ``name`` imports anywhere in its source, with the
    packages whose ``__init__`` importing them runs."""
    path = module_file(name, root)
    if path is None:
        raise ValueError(f"no module {name!r} under {root}")
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    modules = {n for n in found if n.split(".")[0] == PACKAGE}
    modules |= {".".join(n.split(".")[:i]) for n in modules for i in range(1, n.count(".") + 1)}
    return {n for n in modules if module_file(n, root) is not None}


def import_closure(entry: str, root: Path = SOURCE_ROOT) -> list[str]:
    """``entry`` and every ``dpo_core`` module it reaches through imports, sorted."""
    seen: set[str] = set()
    todo = [entry, *(".".join(entry.split(".")[:i]) for i in range(1, entry.count(".") + 1))]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(direct_imports(name, root) - seen)
    return sorted(seen)


def code_version(entry: str, root: Path = SOURCE_ROOT) -> str:
    """SHA-256 over the relative paths and bytes of the import closure of ``entry``."""
    h = hashlib.sha256()
    for name in import_closure(entry, root):
        path = module_file(name, root)
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
