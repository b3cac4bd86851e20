"""Content digests: the cache keys of every stage are built from these."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def digest_files(paths: Iterable[Path]) -> str:
    """SHA-256 over the names and bytes of ``paths`` (order matters; callers sort)."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        h.update(path.name.encode())
        with path.open("rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
    return h.hexdigest()[:16]


def digest_json(obj) -> str:
    """SHA-256 of a JSON-serialisable object with sorted keys."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def code_version(*modules: str) -> str:
    """Digest of the source files of ``modules`` (dotted names): part of every stage's cache key,
    so editing a stage's code invalidates its cached results."""
    import importlib.util

    files = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"cannot find module {name!r} to version")
        files.append(Path(spec.origin))
    return digest_files(sorted(files))
