"""Held-out answers kept on disk, keyed by what determines them: the model's weights, the engine
and its dtype (or the local backend's batch size, which sets the padding), the answer length and
the prompts. Greedy answers do not change, so a model evaluated again (the base model in every
run, each round's starting policy in the iterative flow) is answered once. They live beside the
stage's output folders, as the feedback stage's item cache does."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dpo_core.common.digest import digest_json
from dpo_core.evaluate.config import EvalConfig
from dpo_core.inference.backends import local_model_id
from dpo_core.inference.vllm_engine import engine_id


def answers_path(folder: Path, cfg: EvalConfig, model_path: str, messages: list[list[dict]]) -> Path:
    engine = engine_id(model_path, cfg.engine) if cfg.engine.resolved() == "vllm" else \
        f"{local_model_id(model_path)}[batch {cfg.batch_size}]"
    key = digest_json(["eval-answers-v1", engine, cfg.max_new_tokens, messages])
    return Path(folder) / "eval-answers" / f"{key}.json"


def load_answers(path: Path) -> list[str] | None:
    return json.loads(path.read_text()) if path.exists() else None


def save_answers(path: Path, answers: list[str]) -> None:
    """Written whole or not at all: a killed run leaves no half file to read back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(answers))
    tmp.replace(path)
