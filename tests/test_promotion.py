"""The promotion gate on a real MLflow SQLite registry: a worse challenger is refused, a better one
promoted, and a promotion can be rolled back by hand."""

from __future__ import annotations

import mlflow
import pytest

from dpo_core.common.records import EvalSample
from dpo_core.evaluate.gate import GateConfig, decide, per_prompt_scores
from tasks.plumbing import registry


def _samples(label: str, passes: list[list[bool]]) -> list[EvalSample]:
    return [EvalSample(label, f"p{i}", "q", "a", p, p) for i, p in enumerate(passes)]


GOOD = _samples("dpo", [[True, True]] * 30 + [[True, False]] * 10)
BAD = _samples("champion", [[True, True]] * 10 + [[False, False]] * 30)


def test_per_prompt_scores():
    s = _samples("m", [[True, False], [True, True]])
    assert per_prompt_scores(s, "verifiable/prompt_strict") == [0.0, 1.0]
    assert per_prompt_scores(s, "verifiable/instruction_strict") == [0.5, 1.0]


def test_gate_promotes_a_clear_winner_and_refuses_a_loser():
    cfg = GateConfig(min_improvement=0.0, confidence=0.9)
    win = decide(GOOD, BAD, cfg)
    assert win.promote and win.bootstrap["ci_low"] > 0
    lose = decide(BAD, GOOD, cfg)
    assert not lose.promote and "not above" in lose.reasons[0]


def test_gate_guard_metric_blocks_a_regression():
    # better on the primary metric (prompt-level strict) but much worse on the loose instruction level
    challenger = _samples("dpo", [[True]] * 20 + [[False]] * 20)
    champion = [EvalSample("c", f"p{i}", "q", "a", [False], [True]) for i in range(40)]
    d = decide(challenger, champion, GateConfig(guard_metrics=["verifiable/instruction_loose"], guard_tolerance=0.02))
    assert not d.promote and "beyond tolerance" in d.reasons[1]


def test_gate_config_names_a_bad_metric():
    with pytest.raises(ValueError, match="accuracy_at_5"):
        GateConfig(primary_metric="accuracy_at_5")


@pytest.fixture()
def logged_models(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_HOME", str(tmp_path))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    uris = []
    for _ in range(3):
        with mlflow.start_run() as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=_Echo(), pip_requirements=[])
            uris.append((info.model_uri, run.info.run_id))
    return uris


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input):
        return model_input


def test_registry_promotion_and_rollback(logged_models):
    name = "dpo-policy-test"
    v1 = registry.register_challenger(name, *logged_models[0])
    assert str(registry.alias_version(name, registry.CHALLENGER).version) == v1
    assert registry.alias_version(name, registry.CHAMPION) is None
    registry.promote(name, v1, "first")

    v2 = registry.register_challenger(name, *logged_models[1])  # refused: champion stays v1
    assert str(registry.alias_version(name, registry.CHAMPION).version) == v1
    assert str(registry.alias_version(name, registry.CHALLENGER).version) == v2

    v3 = registry.register_challenger(name, *logged_models[2])
    registry.promote(name, v3, "better")
    assert str(registry.alias_version(name, registry.CHAMPION).version) == v3
    assert str(registry.alias_version(name, registry.PREVIOUS).version) == v1

    registry.main(["rollback", "--model", name])  # the one-command rollback
    assert str(registry.alias_version(name, registry.CHAMPION).version) == v1
    registry.main(["promote", "--model", name, "--version", v2])
    assert str(registry.alias_version(name, registry.CHAMPION).version) == v2
