"""How a stage's child process talks to the task that started it: progress lines on stdout and a
``result.json`` in its output folder. Free of torch, so Prefect's process can read it cheaply."""

from __future__ import annotations

import json
import time

PROGRESS_PREFIX = "@progress "  # a stdout line starting with this is a progress record, not log text
RESULT_FILE = "result.json"  # written in the output folder once the stage has finished


def report_progress(done: int, total: int, metrics: dict | None = None) -> None:
    """Print one progress record: the parent relays it to Prefect's log and progress artifact."""
    line = {"done": done, "total": total, "time": time.time()} | ({"metrics": metrics} if metrics else {})
    print(PROGRESS_PREFIX + json.dumps(line), flush=True)


def parse_progress(line: str) -> dict | None:
    """The progress record on ``line``, or None when it is ordinary log text."""
    return json.loads(line[len(PROGRESS_PREFIX):]) if line.startswith(PROGRESS_PREFIX) else None
