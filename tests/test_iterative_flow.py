"""The iterative flow under a real temporary Prefect server and MLflow store, on a tiny random model:
two rounds, each sampling from the policy the last round trained; references as configured; a
run killed (kill -9, flow and stage child) in round 2 and resumed without asking a model again
for a finished item."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from tiny import kill_9, stored_items

from dpo_core.common.digest import digest_files
from dpo_core.data.build_dataset import BuildConfig
from dpo_core.evaluate.config import EvalConfig
from dpo_core.evaluate.gate import GateConfig
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.inference.config import SamplingConfig
from dpo_core.iterative import RoundsConfig
from dpo_core.train.config import DPOConfig
from tasks.plumbing.settings import home, tracking_uri
from tasks.plumbing.tracking import EXPERIMENT, FLOW_TAG

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[1]


def _params(tiny_model: str, registered: str, rounds: RoundsConfig) -> dict:
    return {
        "model": tiny_model,
        # seed=1: not the lifecycle tests' build, which they expect to run, not to find in Prefect's cache
        "data": BuildConfig(source=str(DATA / "prompts.jsonl"), eval_source=str(DATA / "eval_prompts.jsonl"), seed=1),
        "rounds": rounds,
        "feedback": FeedbackConfig(binarize="best_vs_worst", sampling=SamplingConfig(
            num_samples=4, max_new_tokens=16, temperature=1.0, batch_size=1)),
        "dpo": DPOConfig(epochs=1, beta=0.1, loss_type=["sigmoid", "sft"], precision="fp32"),
        "evaluation": EvalConfig(max_new_tokens=12),
        "gate": GateConfig(registered_model=registered),
    }


def _flow_runs(client: MlflowClient, registered: str) -> list:
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`{FLOW_TAG}` = 'dpo-iterative'",
                              order_by=["attributes.start_time ASC"])
    return [r for r in runs if r.data.params.get("gate.registered_model") == registered]


def _children(client: MlflowClient, run_id: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(EXPERIMENT)
    by_stage: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                order_by=["attributes.start_time ASC"]):
        by_stage.setdefault(r.data.tags["stage"], []).append(r)
    return by_stage


def _weights_digest(model_uri: str, dest: Path) -> str:
    mlflow.set_tracking_uri(tracking_uri())
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    return digest_files(sorted(next(folder.rglob("config.json")).parent.glob("*.safetensors")))


@pytest.fixture(scope="module")
def two_rounds(prefect_server, tiny_model):
    from flows.iterative import iterative

    return iterative(**_params(tiny_model, "tiny-iterative", RoundsConfig(rounds=2, stop_when_worse=False)))


def test_each_round_samples_from_the_last_rounds_policy(two_rounds, tiny_model, tmp_path):
    client = MlflowClient(tracking_uri())
    (parent,) = _flow_runs(client, "tiny-iterative")
    assert parent.info.status == "FINISHED"
    children = _children(client, parent.info.run_id)
    rounds = children["round"]
    assert [r.data.tags["round"] for r in rounds] == ["1", "2"]
    assert "promote" in children
    stages = [_children(client, r.info.run_id) for r in rounds]
    for r, stage in zip(rounds, stages, strict=True):
        assert r.info.status == "FINISHED"
        assert {"collect-feedback", "dpo", "evaluate"} <= set(stage)
    # round 1 samples from the starting model; round 2 from the weights round 1's DPO logged
    first, second = (s["collect-feedback"][0].data.params for s in stages)
    assert Path(first["model"]) == Path(tiny_model).resolve()
    sampled = digest_files(sorted(Path(second["model"]).glob("*.safetensors")))
    assert sampled == _weights_digest(stages[0]["dpo"][0].data.tags["model_uri"], tmp_path / "round-1")
    # the reference is each round's starting policy (rounds.reference=round_start)
    dpo_params = [s["dpo"][0].data.params for s in stages]
    assert dpo_params[1]["reference_model_uri"] == stages[0]["dpo"][0].data.tags["model_uri"]
    assert dpo_params[0]["reference_model_uri"] == dpo_params[0]["policy_model_uri"]
    # fresh prompts: the two rounds answered disjoint halves of the training prompts
    prompts = [json.loads(Path(s["collect-feedback"][0].info.artifact_uri.removeprefix("file://"), "feedback",
                                    "candidates.jsonl").read_text().splitlines()[0])["prompt_id"] for s in stages]
    assert prompts[0] != prompts[1]
    # per-round metrics on the parent, by round, and the plot
    history = client.get_metric_history(parent.info.run_id, "round/heldout/verifiable/prompt_strict")
    assert [m.step for m in history] == [1, 2]
    for key in ("round/feedback/pairs", "round/feedback/tie_rate", "round/feedback/mean_chosen_tokens",
                "round/dpo/rewards/margins", "round/heldout/answer_words"):
        assert [m.step for m in client.get_metric_history(parent.info.run_id, key)] == [1, 2], key
    assert "rounds.png" in [a.path for a in client.list_artifacts(parent.info.run_id)]


_SCRIPT = textwrap.dedent("""
    import json, sys
    from dpo_core.data.build_dataset import BuildConfig
    from dpo_core.evaluate.config import EvalConfig
    from dpo_core.evaluate.gate import GateConfig
    from dpo_core.feedback.config import FeedbackConfig
    from dpo_core.iterative import RoundsConfig
    from dpo_core.train.config import DPOConfig
    from flows.iterative import iterative

    p = json.loads(sys.argv[1])
    iterative(model=p["model"], data=BuildConfig(**p["data"]), rounds=RoundsConfig(**p["rounds"]),
              feedback=FeedbackConfig(**p["feedback"]), dpo=DPOConfig(**p["dpo"]),
              evaluation=EvalConfig(**p["evaluation"]), gate=GateConfig(**p["gate"]))
""")


def _kill_in_round_2_feedback(proc: subprocess.Popen, feedback_dirs: Path, known: set[str], cache: Path,
                              timeout: float = 600) -> tuple[int, int, float]:
    """Wait for round 2's feedback stage to store its first items, then freeze and kill -9 the flow
    process and every process under it (the stage child runs in a session of its own). Returns the
    items the cache held when round 2's stage started and when it was killed, and when that was."""
    deadline = time.monotonic() + timeout
    before = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the flow finished before it could be killed"
        new = [d for d in feedback_dirs.iterdir() if d.is_dir() and d.name not in known] if feedback_dirs.exists() else []
        if before is None and len(new) >= 2:
            before = stored_items(cache)  # round 2's stage has started: round 1's items are all stored
        elif before is not None and stored_items(cache) > before:
            stored, killed_at = kill_9(proc.pid, lambda: (stored_items(cache), time.time()))
            proc.wait()
            return before, stored, killed_at
        time.sleep(0.005)
    raise AssertionError("round 2's feedback never started")


def test_a_run_killed_in_round_2_resumes_there(prefect_server, tiny_model):
    from prefect.settings import PREFECT_API_URL

    from flows.iterative import iterative

    rounds = RoundsConfig(rounds=2, prompts="same", reference="initial", stop_when_worse=False)
    params = _params(tiny_model, "tiny-iterative-killed", rounds)
    feedback_dirs = home() / "stages" / "collect-feedback"
    cache = feedback_dirs / "feedback-items.sqlite"
    known = {d.name for d in feedback_dirs.iterdir()} if feedback_dirs.exists() else set()
    job = json.dumps({k: v if isinstance(v, str) else asdict(v) for k, v in params.items()})
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, job], cwd=ROOT, start_new_session=True,
                            env=os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before, stored, killed_at = _kill_in_round_2_feedback(proc, feedback_dirs, known, cache)
    iterative(**params)

    client = MlflowClient(tracking_uri())
    killed, rerun = _flow_runs(client, "tiny-iterative-killed")
    stages = [_children(client, r.info.run_id) for r in _children(client, rerun.info.run_id)["round"]]
    assert "collect-feedback" not in stages[0] and "dpo" not in stages[0]  # round 1 came from Prefect's cache
    feedback = stages[1]["collect-feedback"][0].data.metrics
    # round 2's items stored before the kill are read back (a judgement of candidates round 1 also drew may
    # be too), and none is asked for and stored again: every item from before the kill keeps its time
    assert 0 < stored - before <= feedback["feedback/cache_hits"] < feedback["feedback/candidates"]
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM items WHERE created <= ?", (killed_at,)).fetchone()[0] == stored
    # both rounds' reference is the starting model (rounds.reference=initial), round 2's policy is not
    dpo = stages[1]["dpo"][0].data.params
    assert Path(dpo["reference_model_uri"]) == Path(tiny_model).resolve() != Path(dpo["policy_model_uri"])
