"""``python -m deployments.stack`` started by a test: the stack on loopback ports, and small
clients for its Prefect API and MLflow server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    """``python -m deployments.stack`` in a subprocess, and small clients for its two servers."""

    def __init__(self, home: Path, mlflow_store: str | None = None, prefect_database: str | None = None):
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.prefect = f"http://127.0.0.1:{self.prefect_port}"
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        env = os.environ | {"DPO_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
                            # its own result store: the rest of the suite must not see its cached stages
                            "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect-results"),
                            "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
        env.pop("PREFECT_API_URL", None)
        home.mkdir(parents=True, exist_ok=True)
        self.log = (home / "stack.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.stack", "--prefect-port", str(self.prefect_port),
             "--mlflow-port", str(self.mlflow_port), "--mlflow-store", mlflow_store or f"sqlite:///{home / 'mlflow.db'}",
             *(["--prefect-database", prefect_database] if prefect_database else [])],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = env | {"PREFECT_API_URL": f"{self.prefect}/api"}
        deadline = time.monotonic() + 240
        while "Prefect UI:" not in (home / "stack.log").read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("stack did not start:\n" + (home / "stack.log").read_text()[-3000:])
            time.sleep(1)

    def api(self, method: str, path: str, **kwargs):
        response = httpx.request(method, f"{self.prefect}/api{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def run_deployment(self, flow: str, deployment: str, parameters: dict) -> str:
        dep = self.api("GET", f"/deployments/name/{flow}/{deployment}")
        return self.api("POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})["id"]

    def state(self, flow_run_id: str) -> str:
        return self.api("GET", f"/flow_runs/{flow_run_id}")["state"]["type"]

    def wait(self, flow_run_id: str, until: set[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (state := self.state(flow_run_id)) not in until:
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {state} after {timeout_s}s")
            time.sleep(1)
        return state

    def stop_run(self, flow_run_id: str, timeout_s: float = 60) -> str:
        """Stop a run the test does not need to finish. Cancelled as from the UI; one cancelled
        between the worker's submission and its engine's start exits with the run still
        CANCELLING, which no worker then moves on, so it is marked CANCELLED after ``timeout_s``."""
        self.api("POST", f"/flow_runs/{flow_run_id}/set_state", json={"state": {"type": "CANCELLING"}, "force": True})
        try:
            return self.wait(flow_run_id, TERMINAL, timeout_s)
        except TimeoutError:
            self.api("POST", f"/flow_runs/{flow_run_id}/set_state", json={"state": {"type": "CANCELLED"}, "force": True})
            return self.wait(flow_run_id, TERMINAL, 10)

    def runs_of(self, flow: str, deployment: str) -> list[dict]:
        dep = self.api("GET", f"/deployments/name/{flow}/{deployment}")
        return self.api("POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}})

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()

    def stopped_cleanly(self) -> bool:
        """The stack exited 0 and nothing it started still listens on its ports."""
        for port in (self.prefect_port, self.mlflow_port):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return False
        return self.proc.returncode == 0


def mlflow_runs(stack: LocalStack, flow_run_id: str) -> tuple[object, list]:
    client = MlflowClient(stack.mlflow)
    exp = client.get_experiment_by_name("dpo-lifecycle")
    tagged = client.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    (parent,) = [r for r in tagged if "mlflow.parentRunId" not in r.data.tags]  # its stage runs name it too
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children
