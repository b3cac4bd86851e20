"""The local stack in one command, on loopback: a Prefect server, an MLflow tracking server, every
deployment in ``deployments/prefect.yaml`` on the ``dpo-process`` work pool, a worker serving
them, and (with ``--watch``) a watcher that turns new data files into retraining runs.

    python -m deployments.stack                                   # SQLite stores under outputs/
    python -m deployments.stack --watch incoming/
    python -m deployments.stack --mlflow-store postgresql+psycopg2://mlflow:pw@db/mlflow \
                                --prefect-database postgresql+asyncpg://prefect:pw@db/prefect

(PostgreSQL for MLflow needs ``pip install -e ".[postgres]"``; Prefect ships asyncpg.)

It prints both UI addresses and runs until Ctrl-C (or SIGTERM), then stops every process it
started. Runs started from the UI execute here, with MLflow on the tracking server.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tasks.plumbing.settings import home

ROOT = Path(__file__).resolve().parents[1]
POOL = "dpo-process"
BIN = Path(sys.executable).parent


class Stack:
    def __init__(self, prefect_port: int, mlflow_port: int, mlflow_store: str | None, prefect_database: str | None):
        self.prefect_url = f"http://127.0.0.1:{prefect_port}"
        self.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        self.procs: list[subprocess.Popen] = []
        self.env = os.environ | {
            "PREFECT_API_URL": f"{self.prefect_url}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_UI_URL": self.mlflow_url,
            "DPO_PIPELINE_ROOT": str(ROOT),  # the deployments' pull step runs flows from this checkout
        }
        if prefect_database:
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database
        self.mlflow_store = mlflow_store or f"sqlite:///{home() / 'mlflow.db'}"
        self.prefect_port, self.mlflow_port = prefect_port, mlflow_port

    def start(self, watch: Path | None = None) -> None:
        home().mkdir(parents=True, exist_ok=True)
        self._spawn([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port)])
        self._spawn([BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
                     "--backend-store-uri", self.mlflow_store, "--artifacts-destination", str(home() / "mlartifacts")])
        prefect_server, mlflow_server = self.procs
        _wait_healthy(f"{self.prefect_url}/api/health", prefect_server)
        _wait_healthy(f"{self.mlflow_url}/health", mlflow_server)
        self._run([BIN / "prefect", "work-pool", "create", POOL, "--type", "process", "--overwrite"])
        self._run([BIN / "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"])
        self._spawn([BIN / "prefect", "worker", "start", "--pool", POOL])
        if watch:
            self._spawn([sys.executable, "-m", "deployments.data_events", "watch", str(watch)])

    def stop(self) -> None:
        """Stop every process (and its children) in the reverse order of starting."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def _spawn(self, cmd) -> None:
        self.procs.append(subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=self.env, start_new_session=True))

    def _run(self, cmd) -> None:
        subprocess.run([str(c) for c in cmd], cwd=ROOT, env=self.env, check=True, stdout=subprocess.DEVNULL)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {proc.returncode}: see its output above")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefect-port", type=int, default=4200)
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--mlflow-store", help="MLflow backend store URI (default: SQLite under DPO_HOME)")
    parser.add_argument("--prefect-database", help="Prefect server database URL (default: Prefect's SQLite)")
    parser.add_argument("--watch", type=Path, help="a folder whose new data files start retraining runs")
    args = parser.parse_args()
    stack = Stack(args.prefect_port, args.mlflow_port, args.mlflow_store, args.prefect_database)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGTERM: the same clean stop as Ctrl-C
    try:
        stack.start(args.watch)
        print(f"\nPrefect UI:  {stack.prefect_url}\nMLflow UI:   {stack.mlflow_url}\n"
              f"Worker on pool {POOL!r}; deployments from deployments/prefect.yaml. Ctrl-C stops everything.", flush=True)
        while all(p.poll() is None for p in stack.procs):
            time.sleep(1)
        print("a stack process exited; stopping the rest", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
