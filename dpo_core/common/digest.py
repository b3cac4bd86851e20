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

