"""How a stage's child process talks to the task that started it: progress lines on stdout, a
``result.json`` in its output folder when it finished, an ``error.json`` when it failed (what went
wrong, and whether trying again could help), and dying with it. Free of torch, so Prefect's process
reads it cheaply."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import signal
import sys
import time
from pathlib import Path

PROGRESS_PREFIX = "@progress "  # a stdout line starting with this is a progress record, not log text
RESULT_FILE = "result.json"  # written in the output folder once the stage has finished
ERROR_FILE = "error.json"  # written in the output folder when the stage failed
PARENT_ENV = "DPO_STAGE_PARENT"  # set by the task that starts a stage: its processes die with it
_NETWORK_MODULES = {"httpx", "httpcore", "requests", "urllib3", "aiohttp"}
_PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl if sys.platform == "linux" else None


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


def write_result(out_dir: Path, result: dict) -> None:
    """``result.json`` through a temporary file and a rename: present means whole, and finished."""
    tmp = Path(out_dir) / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(Path(out_dir) / RESULT_FILE)


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``), so a stage never
    outlives the process that started it, even one killed with kill -9, which runs no clean-up; its
    checkpoints or item cache are then resumed by the next run. Elsewhere a no-op: the next run waits
    for the orphan's lock on its folder instead (``tasks.plumbing.child``). Safe in ``preexec_fn``:
    one system call, nothing allocated or locked."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
