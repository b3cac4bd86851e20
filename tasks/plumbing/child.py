"""Run a dpo_core stage in a child process, in its own process group.

The group is killed whole when the task is cancelled, crashes or passes its deadline, so no
trainer outlives its Prefect run; the child's output is relayed line by line to the run's log.
Prefect's own ``timeout_seconds`` cannot interrupt a blocking call, hence the deadline here.
A task process killed with kill -9 runs none of that: the child then dies with it (Linux's
parent-death signal), and a lock on the output folder, held while any stage process lives, makes
the next run wait for a child that did not rather than write beside it. A folder whose stage
finished (``result.json`` beside the same ``job.json``) is trusted as is; any other is resumed by
the stage from what it stored (checkpoints, item cache) or rewritten.
A failure raises ``StageFailed`` quoting the child's own error, and says whether trying again
could help: only a network fault or a process killed from outside.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dpo_core.common.protocol import ERROR_FILE, PARENT_ENV, RESULT_FILE, die_with_parent, parse_progress

_GRACE_SECONDS = 10
_LOCK_FILE = "stage.lock"
_TAIL_LINES = 40  # kept to quote the error of a child that died before writing error.json


class StageFailed(RuntimeError):
    """A stage's child process failed. ``retryable``: a network fault or a kill from outside (the
    same run may not meet it again); bad data, a bad config or a bug fail the same way every time."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def run_stage_in_child(
    stage: str,
    job: dict,
    out_dir: Path,
    log: Callable[[str], None],
    timeout_s: float | None = None,
    on_progress: Callable[[dict], None] | None = None,
    secret_env: dict[str, str] | None = None,
    processes: int = 1,
) -> dict:
    """Run ``python -m dpo_core STAGE`` (in ``processes`` data-parallel processes) and return its
    ``result.json``. ``secret_env`` (API keys) reaches the child through its environment only:
    never the job file, the log or MLflow."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir, log) as lock_fd:
        finished = _finished_result(out_dir, job)
        if finished is not None:
            log(f"stage {stage} already finished in {out_dir}: reusing its {RESULT_FILE}")
            return finished
        job_path = out_dir / "job.json"
        job_path.write_text(json.dumps(job, indent=2))
        for stale in (RESULT_FILE, ERROR_FILE):  # from an earlier attempt in the same folder
            (out_dir / stale).unlink(missing_ok=True)
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        proc = subprocess.Popen(
            _command(stage, job_path, out_dir, processes),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,  # its own process group: killpg reaches every grandchild too
            preexec_fn=die_with_parent,  # and it dies with this process, even one killed by kill -9
            pass_fds=(lock_fd,),  # the folder stays locked while the child lives
            env=os.environ | (secret_env or {}) | {PARENT_ENV: str(os.getpid())},
        )
        relay = threading.Thread(target=_relay, args=(proc, log, on_progress, tail), daemon=True)
        relay.start()
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise StageFailed(f"stage {stage} passed its {timeout_s}s deadline; its process group was killed; "
                              "raise stage_timeout_s or shrink the stage", retryable=False) from None
        except BaseException:  # cancellation, KeyboardInterrupt, crash of the parent task
            _kill_group(proc)
            raise
        finally:
            _kill_stragglers(proc)  # a server or engine process the stage started and left behind
            relay.join(timeout=5)
        if code != 0:
            raise _failure(stage, code, out_dir, tail)
        return json.loads((out_dir / RESULT_FILE).read_text())


def _finished_result(out_dir: Path, job: dict) -> dict | None:
    """The result of a run of this very job that finished in ``out_dir`` (``result.json`` is written
    last, and only on success), or None."""
    result, job_path = out_dir / RESULT_FILE, out_dir / "job.json"
    if result.exists() and job_path.exists() and json.loads(job_path.read_text()) == job:
        return json.loads(result.read_text())
    return None


@contextmanager
def _folder_lock(out_dir: Path, log: Callable[[str], None]) -> Iterator[int]:
    """An exclusive lock on the stage's folder. The stage process inherits it, so the kernel frees it
    only when both are gone: a second run of the same stage (same inputs, same folder) waits for
    the first, or for a child of a killed run that outlived it, then finds its result."""
    fd = os.open(out_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{out_dir} is in use by a run of this stage started by process {os.pread(fd, 32, 0).decode()}; "
                "waiting for it to end")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield fd
    finally:
        os.close(fd)


def _failure(stage: str, code: int, out_dir: Path, tail: deque[str]) -> StageFailed:
    """The child's own error (``error.json``), else the last error line it printed, else its exit."""
    error_file = out_dir / ERROR_FILE
    if error_file.exists():
        error = json.loads(error_file.read_text())
        return StageFailed(f"stage {stage} failed: {error['type']}: {error['message']}", error["retryable"])
    if code < 0:  # a signal from outside (the OOM killer, a preempted machine): the next attempt may get through
        return StageFailed(f"stage {stage} was killed by signal {-code}; see the log above and {out_dir}", True)
    errors = [line for line in tail if _looks_like_error(line)]
    quoted = errors[-1] if errors else (tail[-1] if tail else "no output")
    return StageFailed(f"stage {stage} exited with code {code}: {quoted}", retryable=False)


def _looks_like_error(line: str) -> bool:
    """A Python traceback's last line: ``SomeError: message``."""
    name = line.split(":", 1)[0]
    return ":" in line and name.replace(".", "").isidentifier() and name.endswith(("Error", "Exception"))


def _command(stage: str, job_path: Path, out_dir: Path, processes: int) -> list[str]:
    stage_module = ["-m", "dpo_core", stage, str(job_path), str(out_dir)]
    if processes == 1:
        return [sys.executable, *stage_module]
    # accelerate's launcher (torchrun underneath), one process per GPU; on a machine without GPUs
    # the same command starts CPU processes that talk over gloo
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={processes}",
            "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", *stage_module]


def _relay(proc: subprocess.Popen, log, on_progress, tail: deque[str]) -> None:
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        progress = parse_progress(line)
        if progress is not None:
            metrics = " ".join(f"{k}={v:.4g}" for k, v in progress.get("metrics", {}).items())
            log(f"{progress['done']}/{progress['total']} {metrics}".rstrip())
            if on_progress:
                on_progress(progress)
        elif line:
            log(line)


def _kill_stragglers(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the group once its leader has exited."""
    if proc.poll() is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # nothing left
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
