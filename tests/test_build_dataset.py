"""Stage 1 on real files: formats, validation with kept rejects, dedupe, decontamination."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from dpo_core.common.io import read_jsonl
from dpo_core.data.build_dataset import BuildConfig, build_dataset

GOOD = [
    {"id": "a", "prompt": "Describe the moon in one sentence.", "instructions": [{"kind": "lowercase", "args": {}}]},
    {"id": "b", "messages": [{"role": "user", "content": "Name three rivers in Europe."}]},
    {"id": "c", "prompt": "Explain how a kite flies.", "instructions": []},
]
EVAL = [{"id": "e1", "prompt": "Summarise the plot of a heist film in two lines."}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_builtin_set_builds_with_disjoint_splits(tmp_path):
    result = build_dataset(BuildConfig(), tmp_path)
    train, held_out = read_jsonl(result.train_path), read_jsonl(result.eval_path)
    assert len(train) >= 300 and len(held_out) >= 60
    assert not {r["id"] for r in train} & {r["id"] for r in held_out}
    assert result.counts["rejected_contaminated"] == 0  # the shipped eval split shares no task with train


def test_bad_rows_are_rejected_with_reason_and_kept(tmp_path):
    rows = GOOD + [
        {"id": "empty", "prompt": "   "},
        {"id": "nofield", "text": "where is the prompt?"},
        {"id": "badkind", "prompt": "Write a haiku.", "instructions": [{"kind": "rhymes", "args": {}}]},
        {"id": "badargs", "prompt": "Write a haiku.", "instructions": [{"kind": "max_words", "args": {"count": 3}}]},
        {"id": "assistant-last", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    ]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    result = build_dataset(BuildConfig(source=src, eval_source=ev), tmp_path / "out")
    rejected = {r["id"]: r for r in read_jsonl(result.rejected_path)}
    assert set(rejected) == {"empty", "nofield", "badkind", "badargs", "assistant-last"}
    assert "row 3" in rejected["empty"]["_reason"] and "'prompt' is empty" in rejected["empty"]["_reason"]
    assert "needs a 'prompt'" in rejected["nofield"]["_reason"]
    assert "rhymes" in rejected["badkind"]["_reason"]
    assert "max_words" in rejected["badargs"]["_reason"]
    assert "last message must come from the user" in rejected["assistant-last"]["_reason"]
    assert rejected["nofield"]["text"] == "where is the prompt?"  # the user's content is kept as given
    assert result.counts["rejected_invalid"] == 5 and result.counts["train"] == 3


def test_dedupe_and_decontamination(tmp_path):
    rows = GOOD + [
        {"id": "dup", "prompt": "describe the MOON in one sentence!"},  # same words as "a"
        {"id": "leak", "prompt": "Summarise the plot of a heist film in two lines."},  # verbatim eval prompt
    ]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    result = build_dataset(BuildConfig(source=src, eval_source=ev), tmp_path / "out")
    reasons = {r["id"]: r["_reason"] for r in read_jsonl(result.rejected_path)}
    assert reasons["dup"].startswith("duplicate of prompt a")
    assert reasons["leak"].startswith("contaminated") and "e1" in reasons["leak"]
    assert [r["id"] for r in read_jsonl(result.train_path)].count("a") == 1


@pytest.mark.parametrize("fmt", ["csv", "parquet", "datasets"])
def test_tabular_and_datasets_sources(tmp_path, fmt):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "prompt": [r.get("prompt", "Name three rivers.") for r in GOOD],
                          "instructions": [json.dumps(r.get("instructions", [])) for r in GOOD]})
    if fmt == "csv":
        src = tmp_path / "in.csv"
        frame.to_csv(src, index=False)
    elif fmt == "parquet":
        src = tmp_path / "in.parquet"
        frame.to_parquet(src)
    else:
        src = tmp_path / "ds"
        datasets.Dataset.from_pandas(frame).save_to_disk(str(src))
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    result = build_dataset(BuildConfig(source=str(src), eval_source=ev), tmp_path / "out")
    train = {r["id"]: r for r in read_jsonl(result.train_path)}
    assert set(train) == {"a", "b", "c"}
    assert train["a"]["instructions"] == [{"kind": "lowercase", "args": {}}]


def test_all_rows_bad_is_a_clear_error(tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", [{"prompt": ""}])
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    with pytest.raises(ValueError, match="no usable training prompts"):
        build_dataset(BuildConfig(source=src, eval_source=ev), tmp_path / "out")
    assert read_jsonl(tmp_path / "out" / "rejected.jsonl")[0]["_row"] == 0  # still written for the user


def test_user_source_without_eval_is_split(tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Tell me fact number {i} about {w}."} for i, w in enumerate("abcdefghij" * 2)]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    result = build_dataset(BuildConfig(source=src, eval_fraction=0.25), tmp_path / "out")
    assert result.counts["eval"] == 5 and result.counts["train"] == 15
