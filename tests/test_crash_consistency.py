"""kill -9 anywhere, run again, and find nothing lost, nothing repeated, nothing left RUNNING.

A lifecycle command runs on a tiny model in a home of its own and is killed (kill -9 of the flow
process and every process under it, as a crashed machine would) in the middle of feedback, then of
SFT, then of DPO; each time it is started again, unchanged, until it finishes. Then the same stage
jobs run again, uninterrupted, in fresh folders: their outputs must equal the crashed run's. Real
Prefect server, real MLflow store, real child processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from tiny import kill_9, stored_items

from tasks.plumbing.child import run_stage_in_child
from tasks.plumbing.reconcile import RECONCILED_BY_TAG, RECONCILED_REASON_TAG
from tasks.plumbing.tracking import EXPERIMENT, FLOW_RUN_TAG, FLOW_TAG

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[1]


def _command(tiny_model: str) -> list[str]:
    options = {
        "model": tiny_model, "data.source": DATA / "prompts.jsonl", "data.eval_source": DATA / "eval_prompts.jsonl",
        "feedback.sampling.num_samples": 4, "feedback.sampling.max_new_tokens": 24,
        "feedback.sampling.temperature": 1.0, "feedback.sampling.batch_size": 2,
        # the default time rule for checkpoints, its interval shrunk to fit a tiny model's run
        "sft.min_score": 0.5, "sft.epochs": 2, "sft.batch_size": 1, "sft.checkpoint_interval_s": 1e-6,
        "sft.precision": "fp32",
        "dpo.epochs": 4, "dpo.batch_size": 1, "dpo.checkpoint_interval_s": 1e-6, "dpo.precision": "fp32",
        "evaluation.max_new_tokens": 8, "gate.registered_model": "tiny-crash",
    }
    return [sys.executable, "-m", "flows.lifecycle", *(str(x) for k, v in options.items() for x in (f"--{k}", v))]


class Home:
    """A DPO_HOME with its own MLflow store and Prefect result storage, on the session's Prefect server."""

    def __init__(self, root: Path):
        from prefect.settings import PREFECT_API_URL

        self.root = root
        # named outright: MLflow's set_tracking_uri, called by other tests in this process, exports the session's store
        self.env = os.environ | {"DPO_HOME": str(root), "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect-results"),
                                 "DPO_CACHE_DIR": str(root / "cache"), "PREFECT_API_URL": PREFECT_API_URL.value(),
                                 "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}

    def start(self, command: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT)

    def stage_dirs(self, stage: str) -> list[Path]:
        folder = self.root / "stages" / stage
        return [d for d in folder.iterdir() if d.is_dir()] if folder.exists() else []

    def items(self) -> int:
        return stored_items(self.root / "stages" / "collect-feedback" / "feedback-items.sqlite")

    def last_checkpoint(self, stage: str) -> int:
        steps = [int(c.name.split("-")[1]) for d in self.stage_dirs(stage) for c in (d / "checkpoints").glob("step-*")]
        return max(steps, default=0)

    def finished(self, stage: str) -> bool:
        return any((d / "result.json").exists() for d in self.stage_dirs(stage))

    def job(self, stage: str) -> dict:
        (folder,) = self.stage_dirs(stage)
        return json.loads((folder / "job.json").read_text())

    def output(self, stage: str, name: str) -> Path:
        (folder,) = self.stage_dirs(stage)
        return folder / name

    def mlflow(self) -> MlflowClient:
        return MlflowClient(self.env["MLFLOW_TRACKING_URI"])


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], frozen: Callable[[], object], what: str,
               timeout: float = 900):
    """kill -9 the flow and its stage child as soon as ``ready()``; return what ``frozen`` read then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the flow ended (rc {proc.returncode}) before it was killed {what}"
        if ready():
            seen = kill_9(proc.pid, frozen)
            proc.wait()
            return seen
        time.sleep(0.005)
    raise AssertionError(f"never got {what}")


@pytest.fixture(scope="module")
def crashed_three_times(prefect_server, tiny_model, tmp_path_factory):
    """The run killed mid-feedback, mid-SFT and mid-DPO, then finished."""
    command, logs = _command(tiny_model), tmp_path_factory.mktemp("logs")
    home = Home(tmp_path_factory.mktemp("crashed"))
    seen = {}
    proc = home.start(command, logs / "1.log")
    seen["items"], seen["killed_at"] = _kill_when(
        proc, lambda: home.items() >= 8 and not home.finished("collect-feedback"),
        lambda: (home.items(), time.time()), "in the middle of feedback")
    for n, stage in ((2, "sft"), (3, "dpo")):
        proc = home.start(command, logs / f"{n}.log")
        seen[stage] = _kill_when(proc, lambda s=stage: home.last_checkpoint(s) >= 2 and not home.finished(s),
                                 lambda s=stage: home.last_checkpoint(s), f"in the middle of {stage}")
        assert not home.finished(stage)
    finished = home.start(command, logs / "4.log").wait()
    assert finished == 0, (logs / "4.log").read_text()
    return home, seen, (logs / "4.log").read_text()


def _runs(client: MlflowClient) -> tuple[list, dict[str, dict[str, object]]]:
    """The flow's parent runs, oldest first, and each one's stage runs by stage."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([exp.experiment_id], f"tags.`{FLOW_TAG}` = 'dpo-lifecycle'",
                                 order_by=["attributes.start_time ASC"])
    stages = {p.info.run_id: {r.data.tags["stage"]: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'")} for p in parents}
    return parents, stages


def test_no_run_is_left_running_and_each_killed_one_says_why(crashed_three_times):
    from prefect.client.orchestration import get_client

    home, _, log = crashed_three_times
    client = home.mlflow()
    everything = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert [r.info.run_name for r in everything if r.info.status == "RUNNING"] == []
    parents, stages = _runs(client)
    assert [p.info.status for p in parents] == ["KILLED", "KILLED", "KILLED", "FINISHED"]
    for killed, stage, next_run in zip(parents, ("collect-feedback", "sft", "dpo"), parents[1:], strict=False):
        # ended by the next run of the flow, at its start, with the reason
        for run in (killed, stages[killed.info.run_id][stage]):
            assert run.info.status == "KILLED"
            assert run.data.tags[RECONCILED_BY_TAG] == next_run.data.tags[FLOW_RUN_TAG]
            assert "is gone" in run.data.tags[RECONCILED_REASON_TAG]
    # the killed flow runs no longer show as running in Prefect either
    with get_client(sync_client=True) as prefect:
        states = [prefect.read_flow_run(p.data.tags[FLOW_RUN_TAG]).state.type.value for p in parents]
    assert states == ["CRASHED", "CRASHED", "CRASHED", "COMPLETED"]
    assert "resumed from the checkpoint of step" in log  # in the Prefect log of the run that finished


def test_no_model_is_asked_again_for_a_finished_feedback_item(crashed_three_times):
    home, seen, _ = crashed_three_times
    cache = home.root / "stages" / "collect-feedback" / "feedback-items.sqlite"
    with sqlite3.connect(cache) as db:  # an item asked for again would have been stored again, later
        assert db.execute("SELECT COUNT(*) FROM items WHERE created <= ?", (seen["killed_at"],)).fetchone()[0] \
            == seen["items"]
    parents, stages = _runs(home.mlflow())
    feedback = stages[parents[1].info.run_id]["collect-feedback"].data.metrics
    assert seen["items"] <= feedback["feedback/cache_hits"] < feedback["feedback/cache_hits"] + \
        feedback["feedback/cache_misses"]


def test_sft_and_dpo_resume_from_their_last_checkpoint(crashed_three_times):
    home, seen, _ = crashed_three_times
    parents, stages = _runs(home.mlflow())
    assert stages[parents[2].info.run_id]["sft"].data.metrics["resumed_from_step"] == seen["sft"] >= 2
    assert stages[parents[3].info.run_id]["dpo"].data.metrics["resumed_from_step"] == seen["dpo"] >= 2


def test_the_pairs_and_models_equal_an_uninterrupted_runs(crashed_three_times, tmp_path):
    """Each stage's job run again from the start, uninterrupted, in a fresh folder (and a fresh item
    cache) gives what the crashed and resumed stages gave: the same candidates and pairs, then
    the same SFT and DPO weights."""
    home, _, _ = crashed_three_times
    for stage, child in (("collect-feedback", "feedback"), ("sft", "sft"), ("dpo", "dpo")):
        again = tmp_path / stage / "out"  # the feedback item cache goes beside it: a new one
        run_stage_in_child(child, home.job(stage), again, lambda _: None)
        if stage == "collect-feedback":
            for name in ("candidates.jsonl", "pairs.jsonl"):
                assert (again / name).read_text() == home.output(stage, name).read_text(), name
            continue
        resumed, straight = (load_file(folder / "model" / "model.safetensors") for folder in
                             (home.output(stage, ""), again))
        assert resumed.keys() == straight.keys()
        for name in resumed:
            assert (resumed[name] == straight[name]).all(), f"{stage}: {name}"
