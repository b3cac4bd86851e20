"""A durable store of finished generations and judgements, one row per item, keyed by what
determines the item (prompt, model, sampling settings, judge, judge prompt version).

Each item is committed the moment it completes, so a stage killed at any point and run again
asks no model twice for an item it finished. SQLite in WAL mode: one file, atomic commits that
survive the process being killed, and readers (a progress view, a second run) never block it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from dpo_core.common.digest import digest_json


def item_key(kind: str, **determinants) -> str:
    """A key over everything that determines an item's result, e.g.
    ``item_key("generation", prompt=messages, model=name, sampling=settings, sample=k)``."""
    return f"{kind}:{digest_json(determinants)}"


class ItemCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit: one commit per put
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process (not power loss)
        self._db.execute("CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                         "created REAL NOT NULL)")
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM items WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO items (key, value, created) VALUES (?, ?, ?)",
                         (key, json.dumps(value), time.time()))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def close(self) -> None:
        self._db.close()
