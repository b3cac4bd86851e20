"""How a stage's child process talks to the task that started it: progress lines on stdout, a
``result.json`` in its output folder when it finished, an ``error.json`` when it failed (what went
wrong, and whether trying again could help). Free of torch, so Prefect's process reads it cheaply."""

from __future__ import annotations

import json
import time

PROGRESS_PREFIX = "@progress "  # a stdout line starting with this is a progress record, not log text
RESULT_FILE = "result.json"  # written in the output folder once the stage has finished
ERROR_FILE = "error.json"  # written in the output folder when the stage failed
_NETWORK_MODULES = {"httpx", "httpcore", "requests", "urllib3", "aiohttp"}


def report_progress(done: int, total: int, metrics: dict | None = None) -> None:
    """Print one progress record: the parent relays it to Prefect's log and progress artifact."""
    line = {"done": done, "total": total, "time": time.time()} | ({"metrics": metrics} if metrics else {})
    print(PROGRESS_PREFIX + json.dumps(line), flush=True)


def parse_progress(line: str) -> dict | None:
    """The progress record on ``line``, or None when it is ordinary log text."""
    return json.loads(line[len(PROGRESS_PREFIX):]) if line.startswith(PROGRESS_PREFIX) else None


def is_transient(exc: BaseException) -> bool:
    """A network fault, which the same run may not meet again; bad data, a bad config or a bug
    would fail the same way every time, so those are never retried."""
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.split(".")[0] in _NETWORK_MODULES


def error_record(exc: BaseException) -> dict:
    """What ``error.json`` holds: the exception's type and message and whether a retry could help."""
    return {"type": type(exc).__name__, "message": str(exc), "retryable": is_transient(exc)}
