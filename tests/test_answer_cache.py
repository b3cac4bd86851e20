"""Held-out answers are kept by model weights, engine and prompts: a model evaluated again is not
asked again, and a model with other weights is."""

from __future__ import annotations

import json

import pytest

from dpo_core.evaluate import stage
from dpo_core.evaluate.config import EvalConfig

PROMPT = {"id": "p1", "messages": [{"role": "user", "content": "Say hi. Do not use any commas."}],
          "instructions": [{"kind": "no_commas", "args": {}}]}


def test_a_model_evaluated_again_is_not_asked_again(tiny_model, tmp_path, monkeypatch):
    heldout = tmp_path / "eval.jsonl"
    heldout.write_text(json.dumps(PROMPT | {"id": "cache-1"}) + "\n" + json.dumps(PROMPT | {"id": "cache-2"}) + "\n")
    cfg = EvalConfig(max_new_tokens=7, batch_size=2)
    first = stage.evaluate(cfg, {"base": tiny_model}, heldout, tmp_path / "first")
    assert len(list((tmp_path / "eval-answers").glob("*.json"))) == 1  # beside the stage's output folders

    def refuse(*args):
        raise AssertionError("the model was loaded again for answers already on disk")

    monkeypatch.setattr(stage, "_answerer", refuse)
    again = stage.evaluate(cfg, {"base": tiny_model}, heldout, tmp_path / "again")
    read = [json.loads(line)["response"] for line in open(first.samples_path)]
    assert [json.loads(line)["response"] for line in open(again.samples_path)] == read
    with pytest.raises(AssertionError, match="loaded again"):  # longer answers are other answers
        stage.evaluate(EvalConfig(max_new_tokens=8, batch_size=2), {"base": tiny_model}, heldout, tmp_path / "longer")
