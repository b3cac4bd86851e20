"""read_rows on real files with every kind of damage: each bad line costs one rejected row with its
file, 1-based line and reason; nothing is repaired silently; read_jsonl stays strict."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest

from dpo_core.common.io import read_jsonl, read_rows, write_jsonl


def _lines(read):
    return [r["_line"] for r in read.rows], [r["_line"] for r in read.rejected]


def test_jsonl_bad_lines_are_rejected_rows_and_the_rest_is_read(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "prompt": "first line, after a byte-order mark"}\n'  # 1
        b"\n"  # 2: blank
        b"   \t\n"  # 3: blank
        b"not json at all\n"  # 4
        b'{"id": "b", "prompt": "caf\xe9 in Latin-1"}\n'  # 5: not UTF-8
        b"null\n"  # 6
        b"[1, 2]\n"  # 7
        b'"a string"\n'  # 8
        b'{"id": "c", "prompt": "x"} {"id": "d"}\n'  # 9: two objects on one line
        b'\xef\xbb\xbf{"id": "e", "prompt": "a second file joined with cat"}\r\n'  # 10
        b'{"id": "f", "prompt": "cut off mid-wri'  # 11: truncated, no line ending
    )
    src = str(path)
    read = read_rows(src)
    assert _lines(read) == ([1, 10], [4, 5, 6, 7, 8, 9, 11])
    assert [r["id"] for r in read.rows] == ["a", "e"]
    assert read.rows[0] == {"id": "a", "prompt": "first line, after a byte-order mark", "_source": src, "_line": 1}
    assert read.blank_lines == 2
    assert all(r["_source"] == src for r in read.rejected)
    reasons = {r["_line"]: r["_reason"] for r in read.rejected}
    assert reasons[4] == f"{src}:4: not valid JSON (Expecting value, column 1); fix or remove the line"
    assert reasons[5].startswith(f"{src}:5: byte 27 of the line is not UTF-8") and "re-save the file as UTF-8" in reasons[5]
    assert reasons[6] == f"{src}:6: holds null, not an object; each line must be one {{...}} row"
    assert "holds a JSON list" in reasons[7] and "holds a JSON str" in reasons[8]
    assert "Extra data" in reasons[9]
    assert "was the file cut off" in reasons[11]
    raws = {r["_line"]: r["_raw"] for r in read.rejected}
    assert raws[5] == '{"id": "b", "prompt": "caf\\xe9 in Latin-1"}'  # the bytes kept, escaped
    assert raws[11] == '{"id": "f", "prompt": "cut off mid-wri'
    assert read.control_chars_stripped == 0


def test_control_characters_are_stripped_and_counted(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"id": "a", "prompt": "bell\x07 and escaped \\u0000nul", "tags": ["\\u001bx", "ok"]}\n'
        b'{"id": "b", "prompt": "tab\\tnewline\\ncarriage\\rkept"}\n'
        b'{"id": "c", "prompt": "del \\u007f and C1 \\u0085 are not C0: kept"}\n'
    )
    read = read_rows(str(path))
    assert [r["prompt"] for r in read.rows] == ["bell and escaped nul", "tab\tnewline\ncarriage\rkept",
                                                "del \x7f and C1 \x85 are not C0: kept"]
    assert read.rows[0]["tags"] == ["x", "ok"]  # nested strings too
    assert read.control_chars_stripped == 1 and read.rejected == []


def test_read_jsonl_is_strict_and_shares_the_line_parser(tmp_path):
    good = write_jsonl(tmp_path / "ok.jsonl", [{"a": 1}, {"b": "\x01 kept: our own files are read as written"}])
    assert read_jsonl(good) == [{"a": 1}, {"b": "\x01 kept: our own files are read as written"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        read_jsonl(bad)
    bad.write_text('{"a": 1}\nnull\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: holds null"):
        read_jsonl(bad)


def test_json_list_object_and_json_lines_under_a_json_name(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text('\ufeff[{"id": "a", "prompt": "x"},\n null,\n {"id": "b", "prompt": "y"}]', encoding="utf-8")
    read = read_rows(str(listed))
    assert _lines(read) == ([1, 3], [2])
    assert "item 2 of the list is NoneType" in read.rejected[0]["_reason"]
    one = tmp_path / "one.json"
    one.write_text('{\n  "id": "a",\n  "prompt": "a pretty-printed single row"\n}\n')
    assert [r["id"] for r in read_rows(str(one)).rows] == ["a"]
    lines = tmp_path / "lines.json"
    lines.write_text('{"id": "a", "prompt": "x"}\n{"broken\n{"id": "c", "prompt": "z"}\n')
    read = read_rows(str(lines))
    assert _lines(read) == ([1, 3], [2])


def test_a_broken_json_list_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n {"id": "a"},\n {"id": \n]\n')
    with pytest.raises(ValueError, match=r"broken\.json:4: not valid JSON .*JSON Lines"):
        read_rows(str(path))


def test_csv_with_bom_semicolons_and_bad_records(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid; prompt;instructions\n"  # 1: BOM, a space after ';' in a header name
        b'1;"Hello; world";[]\n'  # 2
        b"\n"  # 3: blank
        b'2;"bad"quote;[]\n'  # 4: quoting error
        b"3;plain;[]\n"  # 5
        b"4;too;many;cells\n"  # 6
        b"5;short\n"  # 7
        b'6;"two\nlines";[]\n'  # 8-9: one record
        b"7;caf\xe9;[]\n"  # 10: not UTF-8
        b'8;"never closed;[]\n'  # 11
        b"9;swallowed by the open quote;[]\n"  # 12
    )
    src = str(path)
    read = read_rows(src)
    assert read.rows[0] == {"id": "1", "prompt": "Hello; world", "instructions": "[]", "_source": src, "_line": 2}
    assert _lines(read) == ([2, 5, 8], [4, 6, 7, 10, 11])
    assert read.rows[2]["prompt"] == "two\nlines"
    assert read.blank_lines == 1
    rejected = {r["_line"]: r for r in read.rejected}
    assert rejected[4]["_raw"] == '2;"bad"quote;[]'  # as given, never repaired
    assert rejected[4]["_reason"].startswith(f"{src}:4: CSV quoting error")
    assert rejected[6]["_reason"] == (f"{src}:6: has 4 cells but the header has 3; quote cells that hold ';' and give "
                                      "every row one cell per column")
    assert "has 2 cells" in rejected[7]["_reason"]
    assert "not UTF-8" in rejected[10]["_reason"] and rejected[10]["_raw"] == "7;caf\\xe9;[]"
    assert rejected[11]["_raw"] == '8;"never closed;[]\n9;swallowed by the open quote;[]'
    assert "unclosed quote runs from here to the end of the file" in rejected[11]["_reason"]


@pytest.mark.parametrize(("header", "row", "expected"), [
    ("id,prompt", "1,hi", {"id": "1", "prompt": "hi"}),
    ("id\tprompt", "1\thi, there", {"id": "1", "prompt": "hi, there"}),
    ("prompt", "hi; there", {"prompt": "hi; there"}),  # one column: no delimiter in the header, comma
])
def test_csv_delimiter_is_read_from_the_header(tmp_path, header, row, expected):
    path = tmp_path / "in.csv"
    path.write_text(f"{header}\n{row}\n")
    assert [{k: v for k, v in r.items() if not k.startswith("_")} for r in read_rows(str(path)).rows] == [expected]


def test_parquet_list_columns_become_plain_lists(tmp_path):
    frame = pd.DataFrame({
        "id": ["a", "b"],
        "messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                     [{"role": "user", "content": "bye"}]],
        "tags": [["x", "y"], []],
        "nested": [[[1, 2], [3]], [[4]]],
        "when": pd.to_datetime(["2024-01-02", "2024-03-04"]),
        "score": [1.5, None],
    })
    path = tmp_path / "in.parquet"
    frame.to_parquet(path)
    read = read_rows(str(path))
    first, second = read.rows
    assert first["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert type(first["messages"]) is list and type(first["tags"]) is list and first["nested"] == [[1, 2], [3]]
    assert second["tags"] == [] and second["score"] is None
    assert first["when"].startswith("2024-01-02")  # what JSON cannot hold becomes its text
    assert (first["_line"], second["_line"]) == (1, 2) and first["_source"] == str(path)
    write_jsonl(tmp_path / "out.jsonl", read.rows)  # every value is JSON-serialisable


def test_datasets_folder_and_its_splits(tmp_path):
    rows = {"id": ["a", "b"], "conversations": [[{"from": "human", "value": "hi"}], [{"from": "gpt", "value": "yo"}]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    read = read_rows(str(tmp_path / "ds"))
    assert read.rows[1] == {"id": "b", "conversations": [{"from": "gpt", "value": "yo"}], "_source": str(tmp_path / "ds"),
                            "_line": 2}
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_rows(str(tmp_path / "dd"), split="train_prefs").rows) == 2
    with pytest.raises(ValueError, match=r"no split 'train'; it has \['train_prefs'\]"):
        read_rows(str(tmp_path / "dd"))


@pytest.mark.parametrize("source", ["./missing.jsonl", "data/missing.jsonl", "/no/such/dir/x", "~/nope", "missing.parquet",
                                    "a/b/c", "C:\\data\\x"])
def test_a_missing_local_path_is_file_not_found_not_a_hub_lookup(source, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even online: no hub request is made
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_rows(source)


def test_a_hub_id_offline_names_the_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 forbids the hub"):
        read_rows("HuggingFaceH4/ultrafeedback_binarized")


def test_unsupported_suffix_names_the_readable_ones(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("hi\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'; use \.jsonl"):
        read_rows(str(path))
