"""The promotion gate on any per-prompt metric (verifiable accuracies, judge ratings, rewards, head-to-head
win rates), and on a real MLflow SQLite registry: a worse challenger is refused, a better one promoted,
and a promotion can be rolled back by hand."""

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
    s = _samples("m", [[True, False], [True, True]]) + [EvalSample("m", "p2", "q", "a", [], [], {"judge/rating": 7.0})]
    assert per_prompt_scores(s, "verifiable/prompt_strict") == [0.0, 1.0, None]  # None: no instructions
    assert per_prompt_scores(s, "verifiable/instruction_strict") == [0.5, 1.0, None]
    assert per_prompt_scores(s, "judge/rating") == [None, None, 7.0]


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


def _scored(label: str, metric: str, values: list, first: int = 0) -> list[EvalSample]:
    """Samples of prompts without instructions (p<first>, ...), scored by a judge or a reward model."""
    return [EvalSample(label, f"p{i}", "q", "a", [], [], {metric: v}) for i, v in enumerate(values, first)]


def test_the_default_gate_on_instructions_is_the_verifiable_one():
    """Unset, the gate picks verifiable/prompt_strict with the verifiable/instruction_loose guard when the
    prompts have instructions: the same numbers and decision as naming them, and it says so."""
    chosen = decide(GOOD, BAD, GateConfig())
    named = decide(GOOD, BAD, GateConfig(primary_metric="verifiable/prompt_strict",
                                         guard_metrics=["verifiable/instruction_loose"]))
    assert chosen.promote and named.promote and chosen.bootstrap == named.bootstrap and chosen.scores == named.scores
    assert chosen.primary_metric == "verifiable/prompt_strict"
    assert "gate default: the held-out prompts have verifiable instructions" in chosen.reasons[0]
    assert chosen.reasons[1:] == named.reasons[1:] and chosen.reasons[1].startswith("guard verifiable/instruction_loose")


def test_gate_decides_on_the_judge_rating_leaving_unrated_prompts_out():
    """30 prompts rated 8 against 5, every paired difference +3, so the interval is [+3, +3]; the two
    prompts the judge could not rate for the challenger are left out of both sides and counted."""
    challenger = _scored("dpo", "judge/rating", [8.0] * 30 + [None] * 2)
    champion = _scored("base", "judge/rating", [5.0] * 30 + [6.0] * 2)
    d = decide(challenger, champion, GateConfig())  # no instructions: the gate chooses the judge's rating
    assert d.promote and d.primary_metric == "judge/rating" and d.bootstrap["n"] == 30
    assert d.bootstrap["ci_low"] == d.bootstrap["ci_high"] == pytest.approx(3.0)
    assert d.scores == {"challenger": {"judge/rating": 8.0}, "champion": {"judge/rating": 5.0}}
    assert "gate default: no verifiable instructions; the judge rated" in d.reasons[0]
    assert "over the 30 prompts scored on both sides (2 left out)" in d.reasons[0] and len(d.reasons) == 1  # no guard
    assert not decide(champion, challenger, GateConfig()).promote


def test_a_judge_that_rated_nothing_refuses_promotion_without_crashing():
    never = _scored("dpo", "judge/rating", [None] * 5)
    d = decide(never, _scored("base", "judge/rating", [None] * 5), GateConfig())
    assert not d.promote and d.bootstrap == {} and "no prompt has a score for both dpo and base" in d.reasons[0]


def test_gate_decides_on_the_reward():
    """Rewards 0.1 i + 1 against 0.1 i: every paired difference is exactly 1.0, so the interval is
    [1.0, 1.0]: above a required improvement of 0.5, not above 1.5 (in the reward's own units)."""
    challenger = _scored("dpo", "reward/score", [0.1 * i + 1.0 for i in range(20)])
    champion = _scored("champion", "reward/score", [0.1 * i for i in range(20)])
    assert decide(challenger, champion, GateConfig(min_improvement=0.5)).promote
    d = decide(challenger, champion, GateConfig(primary_metric="reward/score", min_improvement=1.5))
    assert not d.promote and d.bootstrap["mean_diff"] == pytest.approx(1.0) and "not above +1.500" in d.reasons[0]
    assert "gate default: no verifiable instructions; the reward model" in decide(challenger, champion, GateConfig()).reasons[0]


def test_gate_decides_on_a_head_to_head_win_rate_against_its_own_baseline():
    """Head to head the champion's side is 0.5 (a tie with itself): outcomes 30 wins, 5 ties, 5 losses
    give a win rate of (30 + 2.5) / 40 = 0.8125, a difference of +0.3125 over one half. The metric is
    looked up against the gate's baseline: a win rate against base says nothing about the champion."""
    outcomes = [1.0] * 30 + [0.5] * 5 + [0.0] * 5
    challenger = [EvalSample("dpo", f"p{i}", "q", "a", [], [], {"pairwise/win_rate_vs_base": o})
                  for i, o in enumerate(outcomes)]
    base = [EvalSample("base", f"p{i}", "q", "a", [], []) for i in range(40)]
    d = decide(challenger, base, GateConfig(primary_metric="pairwise/win_rate"))
    assert d.promote and d.bootstrap["mean_diff"] == pytest.approx(0.3125)
    assert d.scores == {"challenger": {"pairwise/win_rate": 0.8125}, "champion": {"pairwise/win_rate": 0.5}}
    champion = [EvalSample("champion", f"p{i}", "q", "a", [], []) for i in range(40)]
    with pytest.raises(ValueError, match=r"gate.primary_metric='pairwise/win_rate'.* did not produce it; available: none"):
        decide(challenger, champion, GateConfig(primary_metric="pairwise/win_rate"))


def test_a_metric_the_evaluation_did_not_produce_is_a_clear_error_at_gate_time():
    with pytest.raises(ValueError, match=r"gate.primary_metric='judge/rating': the evaluation of dpo and champion did "
                                         r"not produce it; available: verifiable/prompt_strict, .*instruction_loose"):
        decide(GOOD, BAD, GateConfig(primary_metric="judge/rating"))
    with pytest.raises(ValueError, match=r"gate.guard_metrics='reward/score'.*available: judge/rating"):
        decide(_scored("dpo", "judge/rating", [7.0]), _scored("base", "judge/rating", [6.0]),
               GateConfig(guard_metrics=["reward/score"]))


def test_mixed_prompts_gate_on_the_verifiable_metric_over_the_prompts_with_instructions():
    """20 prompts with one instruction (the challenger follows it, the champion does not) and 20
    without, rated by a judge (3 against 9). The default is the verifiable metric, over the 20 prompts
    that have instructions: 1.0 vs 0.0. Named, the judge's rating refuses the same challenger."""
    challenger = _samples("dpo", [[True]] * 20) + _scored("dpo", "judge/rating", [3.0] * 20, first=20)
    champion = _samples("base", [[False]] * 20) + _scored("base", "judge/rating", [9.0] * 20, first=20)
    d = decide(challenger, champion, GateConfig())
    assert d.promote and d.primary_metric == "verifiable/prompt_strict" and d.bootstrap["n"] == 20
    assert d.scores["challenger"]["verifiable/prompt_strict"] == 1.0 and d.scores["champion"]["judge/rating"] == 9.0
    assert "(20 left out)" in d.reasons[0]
    assert not decide(challenger, champion, GateConfig(primary_metric="judge/rating")).promote


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
