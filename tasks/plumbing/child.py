"""Run a dpo_core stage in a child process, in its own process group.

The group is killed whole when the task is cancelled, crashes or passes its deadline, so no
trainer outlives its Prefect run; the child's output is relayed line by line to the run's log.
Prefect's own ``timeout_seconds`` cannot interrupt a blocking call, hence the deadline here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from dpo_core.common.protocol import RESULT_FILE, parse_progress

_GRACE_SECONDS = 10


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
    job_path = out_dir / "job.json"
    job_path.write_text(json.dumps(job, indent=2))
    proc = subprocess.Popen(
        _command(stage, job_path, out_dir, processes),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True,  # its own process group: killpg reaches every grandchild too
        env=os.environ | secret_env if secret_env else None,
    )
    relay = threading.Thread(target=_relay, args=(proc, log, on_progress), daemon=True)
    relay.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise TimeoutError(f"stage {stage} passed its {timeout_s}s deadline; its process group was killed") from None
    except BaseException:  # cancellation, KeyboardInterrupt, crash of the parent task
        _kill_group(proc)
        raise
    finally:
        relay.join(timeout=5)
    if code != 0:
        raise RuntimeError(f"stage {stage} exited with code {code}; see the log above and {out_dir}")
    return json.loads((out_dir / RESULT_FILE).read_text())


def _command(stage: str, job_path: Path, out_dir: Path, processes: int) -> list[str]:
    stage_module = ["-m", "dpo_core", stage, str(job_path), str(out_dir)]
    if processes == 1:
        return [sys.executable, *stage_module]
    # accelerate's launcher (torchrun underneath), one process per GPU; on a machine without GPUs
    # the same command starts CPU processes that talk over gloo
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={processes}",
            "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", *stage_module]


def _relay(proc: subprocess.Popen, log, on_progress) -> None:
    for line in proc.stdout:
        line = line.rstrip()
        progress = parse_progress(line)
        if progress is not None:
            metrics = " ".join(f"{k}={v:.4g}" for k, v in progress.get("metrics", {}).items())
            log(f"{progress['done']}/{progress['total']} {metrics}".rstrip())
            if on_progress:
                on_progress(progress)
        elif line:
            log(line)


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
