"""The team setup: ``python -m deployments.stack`` with both stores on PostgreSQL. A throwaway
PostgreSQL cluster (Debian's, installed by ``make test``) on a loopback port holds the Prefect
server's database and the MLflow tracking store; a deployment runs through the worker, and its
flow run and MLflow runs are read back from the PostgreSQL tables themselves."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from local_stack import TERMINAL, LocalStack, free_port, mlflow_runs

DATA = Path(__file__).parent / "data"


class Postgres:
    """``initdb`` in a temporary folder and ``pg_ctl start`` on a free loopback port, as the
    ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root)."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed: run scripts/install_test_services.sh (make test does)")
        self.bin, self.port = Path(found[-1]), free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dpo-postgres-"))
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(self.root, "postgres")
        data = self.root / "data"
        self._tool("initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        self._tool("pg_ctl", "-D", data, "-w", "-l", self.root / "server.log",
                   "-o", f"-p {self.port} -h 127.0.0.1 -k {self.root}", "start")

    def _tool(self, name: str, *args) -> None:
        subprocess.run([*self.as_owner, str(self.bin / name), *map(str, args)], check=True, capture_output=True)

    def sql(self, database: str, query: str) -> str:
        return subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", database, "-tAc", query], check=True, capture_output=True, text=True).stdout.strip()

    def url(self, driver: str, database: str) -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._tool("pg_ctl", "-D", self.root / "data", "-w", "-m", "fast", "stop")
        shutil.rmtree(self.root)


@pytest.fixture(scope="module")
def postgres():
    server = Postgres()
    for database in ("prefect", "mlflow"):
        server.sql("postgres", f"CREATE DATABASE {database}")
    yield server
    server.stop()


def test_the_stack_on_postgresql_runs_a_deployment(postgres, tmp_path):
    stack = LocalStack(tmp_path / "stack", mlflow_store=postgres.url("psycopg2", "mlflow"),
                       prefect_database=postgres.url("asyncpg", "prefect"))
    try:
        params = {"data": {"source": str(DATA / "prompts.jsonl"), "eval_source": str(DATA / "eval_prompts.jsonl")}}
        flow_run = stack.run_deployment("build-dataset", "build-dataset", params)
        assert stack.wait(flow_run, TERMINAL, 300) == "COMPLETED"
        parent, children = mlflow_runs(stack, flow_run)
        assert [c.data.tags["stage"] for c in children] == ["build-dataset"]
    finally:
        stack.stop()
    assert stack.stopped_cleanly()
    # the runs are in PostgreSQL's tables, and no SQLite file stood in for either store
    finished = postgres.sql("mlflow", "SELECT run_uuid FROM runs WHERE status = 'FINISHED' ORDER BY run_uuid")
    assert finished.split() == sorted([parent.info.run_id, children[0].info.run_id])
    assert postgres.sql("prefect", f"SELECT state_type FROM flow_run WHERE id = '{flow_run}'") == "COMPLETED"
    assert not list((tmp_path / "stack").rglob("*.db"))
