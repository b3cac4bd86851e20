"""Stage 1 on real files: formats, validation with kept rejects, dedupe, decontamination."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from dpo_core.common.io import read_jsonl
from dpo_core.common.records import PreferencePair, PromptRecord, SFTRecord
from dpo_core.data.build_dataset import BuildConfig, build_dataset
from dpo_core.data.instructions import load_instruction_set

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
    transfer = read_jsonl(result.transfer_path)
    assert (len(train), len(held_out), len(transfer)) == (340, 80, 120)
    assert result.transfer_path == str(tmp_path / "transfer.jsonl")
    ids = [{r["id"] for r in rows} for rows in (train, held_out, transfer)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert all(PromptRecord(**r).instructions for r in transfer)
    assert result.counts["transfer"] == 120 and result.counts["rejected"] == 0
    assert result.counts["rejected_contaminated"] == 0  # the shipped held-out splits share no task with train


def _transfer_rows():
    return [{"id": "t1", "prompt": "Describe a lighthouse keeper's morning routine in a calm voice.",
             "instructions": [{"kind": "no_digits", "args": {}}]},
            {"id": "t2", "prompt": "Write a note to a neighbour about a lost cat, ending on a question.",
             "instructions": [{"kind": "end_with_question", "args": {}}]},
            {"id": "t3", "prompt": "Tell me about sailing."},  # no instructions: nothing would score it
            {"id": "t4", "prompt": "Summarise the plot of a heist film in two lines.",  # an eval prompt: eval keeps it
             "instructions": [{"kind": "no_exclamation", "args": {}}]}]


def test_transfer_source_from_a_file(tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", GOOD)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    tr = _write_jsonl(tmp_path / "tr.jsonl", _transfer_rows())
    result = build_dataset(BuildConfig(source=src, eval_source=ev, transfer_source=tr), tmp_path / "out")
    _check_invariants(result)
    assert [r["id"] for r in read_jsonl(result.transfer_path)] == ["t1", "t2"]
    assert [r["id"] for r in read_jsonl(result.eval_path)] == ["e1"]
    rejected = {r["id"]: r for r in read_jsonl(result.rejected_path)}
    assert rejected["t3"]["_category"] == "invalid" and "needs verifiable instructions" in rejected["t3"]["_reason"]
    assert rejected["t4"]["_category"] == "duplicate" and "duplicate of prompt e1" in rejected["t4"]["_reason"]
    assert result.counts["transfer"] == 2 and result.kinds["transfer_source"] == "prompts"
    assert result.counts["rows_in"] == 3 + 1 + 4

    # without transfer_source, a team's build has no transfer set
    plain = build_dataset(BuildConfig(source=src, eval_source=ev), tmp_path / "plain")
    assert plain.transfer_path is None and plain.counts["transfer"] == 0
    assert not (tmp_path / "plain" / "transfer.jsonl").exists() and plain.digest != result.digest


def test_a_transfer_source_with_nothing_usable_is_an_error(tmp_path):
    src = _write_jsonl(tmp_path / "in.jsonl", GOOD)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    tr = _write_jsonl(tmp_path / "tr.jsonl", [{"id": "t", "prompt": "Tell me about sailing."}])
    with pytest.raises(ValueError, match="no usable transfer prompts in transfer_source="):
        build_dataset(BuildConfig(source=src, eval_source=ev, transfer_source=tr), tmp_path / "out")


def test_training_is_decontaminated_against_transfer_prompts(tmp_path):
    transfer = _transfer_rows()[:2]
    rows = GOOD + [{"id": "leak", "prompt": transfer[0]["prompt"]},  # a transfer prompt verbatim
                   {"messages": [U("Hello."), A("Hi."), U(transfer[1]["prompt"])], "id": "leak2"}]
    chats = [{"id": "leak-chat", "messages": [U(transfer[1]["prompt"]), A("Lost cat?")]}, CHATS[0]]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    tr = _write_jsonl(tmp_path / "tr.jsonl", transfer)
    sft = _write_jsonl(tmp_path / "chats.jsonl", chats)
    result = build_dataset(BuildConfig(source=src, eval_source=ev, transfer_source=tr, sft_source=sft), tmp_path / "out")
    _check_invariants(result)
    reasons = {r["id"]: r["_reason"] for r in read_jsonl(result.rejected_path) if r["_category"] == "contaminated"}
    assert set(reasons) == {"leak", "leak2", "leak-chat"}
    assert "held-out prompt t1" in reasons["leak"] and "held-out prompt t2" in reasons["leak-chat"]
    assert result.counts["train"] == 3 and result.counts["sft"] == 1


def test_max_eval_caps_each_held_out_set(tmp_path):
    result = build_dataset(BuildConfig(max_eval=7, max_train=5), tmp_path)
    assert result.counts["eval"] == 7 and result.counts["transfer"] == 7 and result.counts["train"] == 5
    shipped = {r["id"] for r in load_instruction_set(split="transfer")}
    assert len(read_jsonl(result.transfer_path)) == 7 and {r["id"] for r in read_jsonl(result.transfer_path)} <= shipped


def test_source_digest_covers_the_transfer_file(tmp_path):
    from tasks.build_dataset import source_digest

    tr = _write_jsonl(tmp_path / "tr.jsonl", _transfer_rows()[:1])
    before = source_digest(BuildConfig(transfer_source=tr))
    assert before != source_digest(BuildConfig())
    _write_jsonl(tmp_path / "tr.jsonl", _transfer_rows()[:2])
    assert source_digest(BuildConfig(transfer_source=tr)) != before


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
    assert {r["_source"] for r in rejected.values()} == {src}
    assert rejected["empty"]["_line"] == 4 and rejected["empty"]["_reason"].startswith(f"{src}:4: field 'prompt' is empty")
    assert "needs a 'prompt'" in rejected["nofield"]["_reason"]
    assert "rhymes" in rejected["badkind"]["_reason"]
    assert "max_words" in rejected["badargs"]["_reason"]
    # a chat ending in the assistant's turn is an SFT conversation: in a prompt file, a row of the wrong kind
    assert rejected["assistant-last"]["_category"] == "wrong_kind" and "sft_source" in rejected["assistant-last"]["_reason"]
    assert rejected["nofield"]["text"] == "where is the prompt?"  # the user's content is kept as given
    assert result.counts["rejected_invalid"] == 4 and result.counts["rejected_wrong_kind"] == 1
    assert result.counts["train"] == 3


def test_dedupe_and_decontamination(tmp_path):
    rows = GOOD + [
        {"id": "dup", "prompt": "describe the MOON in one sentence!"},  # same words as "a"
        {"id": "leak", "prompt": "Summarise the plot of a heist film in two lines."},  # verbatim eval prompt
    ]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    result = build_dataset(BuildConfig(source=src, eval_source=ev), tmp_path / "out")
    reasons = {r["id"]: r["_reason"] for r in read_jsonl(result.rejected_path)}
    assert reasons["dup"] == f"{src}:4: duplicate of prompt a (line 1); remove one copy"
    assert reasons["leak"].startswith(f"{src}:5: contaminated: 100%") and "held-out prompt e1" in reasons["leak"]
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
    assert read_jsonl(tmp_path / "out" / "rejected.jsonl")[0]["_line"] == 1  # still written for the user


def test_user_source_without_eval_is_split(tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Tell me fact number {i} about {w}."} for i, w in enumerate("abcdefghij" * 2)]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    result = build_dataset(BuildConfig(source=src, eval_fraction=0.25), tmp_path / "out")
    assert result.counts["eval"] == 5 and result.counts["train"] == 15


# --- a team's own conversations and pairs ---------------------------------------------------------

def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


TOPICS = ["rivers", "volcanoes", "tea", "bicycles", "libraries", "comets", "bridges", "owls", "glaciers", "violins"]
CHATS = [{"id": f"c{i}", "messages": [U(f"Tell me about {t} in detail please."), A(f"{t.title()} are fascinating."),
                                       U(f"And why do {t} matter to people?"), A("Because they shape our lives.")]}
         for i, t in enumerate(TOPICS)]
PAIRS = [{"prompt": f"Write one line on {t} for a child.", "chosen": f"{t.title()} are wonderful.",
          "rejected": f"{t} r bad", "score_chosen": 8, "score_rejected": 3} for t in TOPICS]


def _check_invariants(result):
    counts = result.counts
    assert all(isinstance(v, int) for v in counts.values())  # logged as MLflow metrics and typed as dict[str, int]
    assert counts["rejected"] == sum(v for k, v in counts.items() if k.startswith("rejected_"))
    assert counts["rejected"] == len(read_jsonl(result.rejected_path))
    for row in read_jsonl(result.rejected_path):
        assert {"_source", "_line", "_category", "_reason"} <= set(row) and row["_line"] >= 1
        assert row["_reason"].startswith(f"{row['_source']}:")
    assert read_jsonl(result.eval_path)
    outputs = ((result.train_path, PromptRecord), (result.eval_path, PromptRecord), (result.sft_path, SFTRecord),
               (result.pairs_path, PreferencePair))
    for path, record in outputs:
        for row in read_jsonl(path) if path else []:
            record(**row)  # every record validates


def test_pairs_and_conversations_beside_prompts(tmp_path):
    src = _write_jsonl(tmp_path / "prompts.jsonl", GOOD)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    sft = _write_jsonl(tmp_path / "chats.jsonl", CHATS)
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = build_dataset(BuildConfig(source=src, eval_source=ev, sft_source=sft, pairs_source=pairs), tmp_path / "out")
    _check_invariants(result)
    assert result.kinds == {"source": "prompts", "eval_source": "prompts", "sft_source": "sft", "pairs_source": "pairs"}
    assert {k: result.counts[k] for k in ("rows_in", "train", "eval", "sft", "pairs", "rejected")} == {
        "rows_in": 24, "train": 3, "eval": 1, "sft": 10, "pairs": 10, "rejected": 0}
    assert {k: result.counts[f"detected_{k}"] for k in ("prompts", "sft", "pairs")} == {"prompts": 4, "sft": 10, "pairs": 10}
    chats = read_jsonl(result.sft_path)
    assert chats[0] == {"id": "c0", "messages": CHATS[0]["messages"]}
    first = PreferencePair(**read_jsonl(result.pairs_path)[0])
    assert first.prompt == [U("Write one line on rivers for a child.")] and first.chosen == [A("Rivers are wonderful.")]
    assert (first.score_chosen, first.score_rejected, first.prompt_id) == (8.0, 3.0, "pairs-1")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["sources"]["pairs_source"] == {"source": pairs, "kind": "pairs", "detected": {"pairs": 10}}

    # the digest covers every file later stages read: a changed pair changes it
    before = result.digest
    _write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:-1])
    again = build_dataset(BuildConfig(source=src, eval_source=ev, sft_source=sft, pairs_source=pairs), tmp_path / "out2")
    assert again.digest != before and again.counts["pairs"] == 9


def test_only_pairs_hold_out_a_share_of_their_prompts(tmp_path):
    rows = PAIRS + [  # a second pair on the first prompt: held out or trained on together, never split
        {"prompt": "Write one line on rivers for a child.", "chosen": "Rivers run to the sea.", "rejected": "no"}]
    src = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    result = build_dataset(BuildConfig(source=src, eval_fraction=0.3), tmp_path / "out")
    _check_invariants(result)
    assert result.kinds == {"source": "pairs"} and result.sft_path is None
    assert read_jsonl(result.train_path) == []  # no prompts brought: nothing to sample on
    held_out = [PromptRecord(**r) for r in read_jsonl(result.eval_path)]
    assert len(held_out) == 3  # 30% of 10 distinct prompts
    kept = [PreferencePair(**r) for r in read_jsonl(result.pairs_path)]
    assert not {p.prompt[-1]["content"] for p in kept} & {h.text for h in held_out}
    assert result.counts["held_out_from_pairs"] + result.counts["pairs"] == 11 and result.counts["eval"] == 3
    assert result.counts["rejected_contaminated"] == 0  # the split kept shared prompts together


def test_only_conversations_and_pairs_hold_out_from_both(tmp_path):
    src = _write_jsonl(tmp_path / "chats.jsonl", CHATS)
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    result = build_dataset(BuildConfig(source=src, pairs_source=pairs, eval_fraction=0.25), tmp_path / "out")
    _check_invariants(result)
    assert result.kinds == {"source": "sft", "pairs_source": "pairs"} and result.counts["eval"] == 5
    held = {r["id"]: r["messages"] for r in read_jsonl(result.eval_path)}
    for chat in CHATS:  # a held-out conversation becomes its prompt: every turn up to its last user turn
        if chat["id"] in held:
            assert held[chat["id"]] == chat["messages"][:3]
    moved = result.counts["held_out_from_sft"] + result.counts["held_out_from_pairs"]
    assert moved == 5 and result.counts["sft"] + result.counts["pairs"] == 15


def test_pairs_are_filtered_like_prompts(tmp_path):
    rows = [
        PAIRS[0],
        dict(PAIRS[0]),  # line 2: duplicate
        {"prompt": "Write one line on rivers for a child.", "chosen": "Rivers  are wonderful. ", "rejected": "rivers r bad",
         "score_chosen": 8, "score_rejected": 3},  # line 3: the same pair up to spacing
        {"prompt": "Same?", "chosen": "yes", "rejected": "yes"},  # 4
        {"prompt": "Empty?", "chosen": "", "rejected": "no"},  # 5
        {"prompt": "Tied?", "chosen": "a", "rejected": "b", "score_chosen": 5, "score_rejected": 5},  # 6
        {"prompt": "Summarise the plot of a heist film in two lines.", "chosen": "a", "rejected": "b"},  # 7: an eval prompt
        {"prompt": "Tell me something new.", "chosen": "Owls see well.", "rejected": "no"},  # 8
    ]
    chats = [
        CHATS[0],
        {"id": "leak", "messages": [U("Hello there, friend."), A("Hi!"), U("Summarise the plot of a heist film in two lines."),
                                    A("Thieves plan; thieves fall out.")]},  # 2: the eval prompt in its second user turn
        {"id": "c0", "messages": [U("Another chat."), A("Reusing an id.")]},  # 3
        dict(CHATS[1], id="copy"),  # 4: the same conversation as c1 under another id: a duplicate
        CHATS[1],  # 5: now c1 itself repeats its content
    ]
    src = _write_jsonl(tmp_path / "prompts.jsonl", GOOD)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    sft = _write_jsonl(tmp_path / "chats.jsonl", chats)
    result = build_dataset(BuildConfig(source=src, eval_source=ev, pairs_source=pairs, sft_source=sft), tmp_path / "out")
    _check_invariants(result)
    rejected = {(r["_source"], r["_line"]): r for r in read_jsonl(result.rejected_path)}
    assert {(s, line): r["_category"] for (s, line), r in rejected.items()} == {
        (pairs, 2): "duplicate", (pairs, 3): "duplicate", (pairs, 4): "chosen_equals_rejected", (pairs, 5): "empty_answer",
        (pairs, 6): "equal_scores", (pairs, 7): "contaminated",
        (sft, 2): "contaminated", (sft, 3): "duplicate", (sft, 5): "duplicate"}
    assert rejected[(pairs, 2)]["_reason"] == f"{pairs}:2: duplicate of pair pairs-1 (line 1); remove one copy"
    assert rejected[(sft, 3)]["_reason"] == (f"{sft}:3: its id is already used by conversation c0 (line 1); give each row "
                                              "its own id")
    assert rejected[(sft, 5)]["_reason"].startswith(f"{sft}:5: duplicate of conversation copy (line 4)")
    assert "held-out prompt e1" in rejected[(sft, 2)]["_reason"]
    assert rejected[(pairs, 6)]["prompt"] == "Tied?"  # the row as given
    assert {k: result.counts[f"rejected_{k}"] for k in ("duplicate", "chosen_equals_rejected", "empty_answer",
                                                         "equal_scores", "contaminated")} == {
        "duplicate": 4, "chosen_equals_rejected": 1, "empty_answer": 1, "equal_scores": 1, "contaminated": 2}
    assert result.counts["pairs"] == 2 and result.counts["sft"] == 2


def test_a_mixed_source_keeps_its_majority_kind(tmp_path):
    rows = PAIRS[:3] + [{"id": "p", "prompt": "A lone prompt."}, {"messages": [U("hi"), A("a chat")]}]
    src = _write_jsonl(tmp_path / "mixed.jsonl", rows)
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    result = build_dataset(BuildConfig(source=src, eval_source=ev), tmp_path / "out")
    _check_invariants(result)
    assert result.kinds["source"] == "pairs" and result.counts["pairs"] == 3 and result.counts["rejected_wrong_kind"] == 2
    reasons = {r["_line"]: r["_reason"] for r in read_jsonl(result.rejected_path)}
    assert reasons[4] == (f"{src}:4: this row is one of the prompts but source holds preference pairs (3 of 5 rows); put "
                          "it in a file of its own and pass that as source or eval_source")
    assert reasons[5].endswith("pass that as sft_source")


def test_an_even_split_asks_for_source_kind(tmp_path):
    src = _write_jsonl(tmp_path / "even.jsonl", PAIRS[:2] + GOOD[:2])
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    with pytest.raises(ValueError, match="source: .* has as many preference pairs as prompts .2 rows each.; set source_kind"):
        build_dataset(BuildConfig(source=src, eval_source=ev), tmp_path / "out")
    result = build_dataset(BuildConfig(source=src, eval_source=ev, source_kind="prompts"), tmp_path / "out")
    assert result.counts["train"] == 2 and result.counts["rejected_wrong_kind"] == 2


@pytest.mark.parametrize(("field", "rows", "message"), [
    ("sft_source", PAIRS, "sft_source: .* holds preference pairs .10 of 10 rows., not SFT conversations; pass it as "
                          "pairs_source"),
    ("pairs_source", CHATS, "pairs_source: .* holds SFT conversations .10 of 10 rows., not preference pairs; pass it as "
                            "sft_source"),
    ("eval_source", PAIRS, "eval_source: .* holds preference pairs .10 of 10 rows., not prompts; pass it as pairs_source"),
])
def test_a_source_of_another_kind_is_an_error_naming_its_field(tmp_path, field, rows, message):
    path = _write_jsonl(tmp_path / "x.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        build_dataset(BuildConfig(**{field: path}), tmp_path / "out")


def test_source_kind_that_most_rows_contradict_is_an_error(tmp_path):
    src = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    with pytest.raises(ValueError, match="source: .* holds preference pairs .*set source_kind to 'pairs' or 'auto'"):
        build_dataset(BuildConfig(source=src, source_kind="sft"), tmp_path / "out")


def test_builtin_with_another_kind_is_refused():
    with pytest.raises(ValueError, match="source_kind='pairs'"):
        BuildConfig(source_kind="pairs")


def test_a_missing_file_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="pairs_source: ./nowhere/pairs.jsonl: no such file or folder"):
        build_dataset(BuildConfig(pairs_source="./nowhere/pairs.jsonl"), tmp_path / "out")


def test_damaged_lines_become_rejected_rows_of_the_build(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in GOOD).encode()
                    + b'\n{"id": "x", "prompt": "tab\\there, bell\\u0007 gone"}\n{"id": "y", "prom\nnull\n\xff\xfe\n')
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    result = build_dataset(BuildConfig(source=str(src), eval_source=ev), tmp_path / "out")
    _check_invariants(result)
    assert {r["_line"]: r["_category"] for r in read_jsonl(result.rejected_path)} == {
        6: "unreadable", 7: "unreadable", 8: "unreadable"}
    assert result.counts["train"] == 4 and result.counts["blank_lines"] == 1 and result.counts["control_chars_stripped"] == 1
    assert result.counts["rows_in"] == 8  # 4 prompts, 3 damaged lines, 1 held-out prompt
    assert {r["id"]: r["messages"][0]["content"] for r in read_jsonl(result.train_path)}["x"] == "tab\there, bell gone"


def test_team_formats_through_the_stage(tmp_path):
    """UltraFeedback-binarized in Parquet (list columns), ShareGPT in a datasets folder, prompts in a ';' CSV with a BOM."""
    uf = pd.DataFrame({
        "prompt": [p["prompt"] for p in PAIRS],
        "prompt_id": [f"uf{i}" for i in range(10)],
        "chosen": [[U(p["prompt"]), A(p["chosen"])] for p in PAIRS],
        "rejected": [[U(p["prompt"]), A(p["rejected"])] for p in PAIRS],
        "messages": [[U(p["prompt"]), A(p["chosen"])] for p in PAIRS],
        "score_chosen": [8.0] * 10,
        "score_rejected": [3.0] * 9 + [8.0],  # the last: tied
    })
    uf.to_parquet(tmp_path / "uf.parquet")
    sharegpt = [[{"from": "human", "value": c["messages"][0]["content"]}, {"from": "gpt", "value": c["messages"][1]["content"]}]
                for c in CHATS]
    datasets.Dataset.from_dict({"conversations": sharegpt}).save_to_disk(str(tmp_path / "sharegpt"))
    (tmp_path / "prompts.csv").write_bytes("\ufeffid;prompt;instructions\n"
                                           'a;"Describe the moon; briefly.";"[{""kind"": ""lowercase"", ""args"": {}}]"\n'
                                           "b;Name three rivers.;[]\n"
                                           'c;"broken"quote;[]\n'.encode())
    ev = _write_jsonl(tmp_path / "ev.jsonl", EVAL)
    result = build_dataset(BuildConfig(source=str(tmp_path / "prompts.csv"), eval_source=ev,
                                       sft_source=str(tmp_path / "sharegpt"), pairs_source=str(tmp_path / "uf.parquet")),
                           tmp_path / "out")
    _check_invariants(result)
    train = {r["id"]: r for r in read_jsonl(result.train_path)}
    assert train["a"]["instructions"] == [{"kind": "lowercase", "args": {}}] and set(train) == {"a", "b"}
    pairs = [PreferencePair(**r) for r in read_jsonl(result.pairs_path)]
    assert len(pairs) == 9 and pairs[0].prompt_id == "uf0" and pairs[0].prompt == [U(PAIRS[0]["prompt"])]
    assert [SFTRecord(**r) for r in read_jsonl(result.sft_path)][0].messages == CHATS[0]["messages"][:2]
    rejected = {(r["_source"], r["_line"]): r["_category"] for r in read_jsonl(result.rejected_path)}
    assert rejected == {(str(tmp_path / "prompts.csv"), 4): "unreadable", (str(tmp_path / "uf.parquet"), 10): "equal_scores"}


def test_builtin_outputs_are_unchanged():
    """The demo's numbers in the README come from these bytes: a change to them must be deliberate."""
    import tempfile

    from flows.presets import CPU_DEMO

    with tempfile.TemporaryDirectory() as out:
        assert build_dataset(BuildConfig(), Path(out) / "all").digest == "b3598aa59aef575f"
        demo = build_dataset(CPU_DEMO["data"], Path(out) / "demo")
        assert demo.digest == "89daca6f605c3f73" and (demo.sft_path, demo.pairs_path) == (None, None)
        assert (demo.counts["eval"], demo.counts["transfer"]) == (80, 80)
