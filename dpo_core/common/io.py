"""Row I/O: JSONL, JSON, CSV, Parquet, a saved ``datasets`` folder, or a hub dataset id.

``read_rows`` reads a team's file and loses nothing: a line it cannot read becomes one rejected
row (``_raw`` text, ``_source``, 1-based ``_line``, ``_reason``), never a failed file. Its rules:

- Text files must be UTF-8. A byte-order mark at the start of the file or of a line (files joined
  with ``cat``) is dropped; a line with bytes that are not UTF-8 is rejected.
- JSONL: blank lines are skipped and counted; a line that is not JSON (cut off, say) or holds
  ``null``, a list or a scalar instead of an object is rejected.
- JSON: a list of rows (``_line`` is the item's 1-based position), or one object, or else read as
  JSON Lines. A list that does not parse is an error naming its line: nothing in it is reliable.
- CSV: the delimiter is whichever of ``,`` ``;`` tab occurs most in the header line (comma when
  none). Cells are text. A record with a quoting error or with another number of cells than the
  header is rejected with its lines as given, never repaired.
- Parquet, ``datasets`` folders and hub datasets: read through Arrow into plain lists, dicts and
  scalars (``_line`` is the 1-based row number); values JSON cannot hold become their text.
- Every string in a kept row loses its C0 control characters other than tab, newline and carriage
  return (U+0000-U+0008, U+000B, U+000C, U+000E-U+001F): they are invisible, break tokenizers and
  JSON consumers, and carry no meaning in a chat. ``control_chars_stripped`` counts the rows changed.
- A source that looks local (it starts with ``.``, ``/`` or ``~``, has a row-file suffix, or is not
  shaped like a hub id ``name`` or ``owner/name``) and does not exist is "file not found", never a
  hub lookup.

``read_jsonl`` is the strict reader for the pipeline's own files (written by ``write_jsonl``): the
same line parsing, but any bad line is an error, since it means a bug or a damaged file.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROW_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")  # what read_rows reads, besides folders

_BOM = "\ufeff"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_CSV_DELIMITERS = (",", ";", "\t")  # comma first: it wins ties


@dataclass
class RowRead:
    """What ``read_rows`` got from one source."""

    rows: list[dict] = field(default_factory=list)  # each row as given, plus _source and _line
    rejected: list[dict] = field(default_factory=list)  # _raw text or the row, plus _source, _line, _reason
    blank_lines: int = 0  # skipped, not rejected: they hold nothing
    control_chars_stripped: int = 0  # rows that had C0 control characters removed


@dataclass
class _Line:
    number: int  # 1-based
    text: str  # without its line ending
    value: object = None  # the parsed JSON object
    error: str = ""  # why the line is not a row, beginning with its file and line

    @property
    def blank(self) -> bool:
        return not self.error and not self.text.strip()


def read_rows(source: str, split: str = "train") -> RowRead:
    """Read ``source`` into rows, choosing the reader by extension or folder kind (rules in the module docstring)."""
    path = Path(source).expanduser()
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{source}: no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        return _finish(source, enumerate(ds.to_list(), 1))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in {".jsonl", ".ndjson"}:
            return _read_json_lines(path, source)
        if suffix == ".json":
            return _read_json(path, source)
        if suffix == ".csv":
            return _read_csv(path, source)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:  # pyarrow raises several types for damaged files
                raise ValueError(f"{source}: not a readable Parquet file ({e}); re-export it") from e
            return _finish(source, enumerate(table.to_pylist(), 1))
        raise ValueError(f"{source}: unsupported file type {suffix!r}; use {', '.join(ROW_FILE_SUFFIXES)} or a datasets folder")
    if _looks_local(source):
        raise FileNotFoundError(f"{source}: no such file or folder (relative paths start at {Path.cwd()}); check the path")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{source} is not a local file or folder, and HF_HUB_OFFLINE=1 forbids the hub")
    import datasets

    return _finish(source, enumerate(datasets.load_dataset(source, split=split).to_list(), 1))


def read_jsonl(path: Path) -> list[dict]:
    """Read one of the pipeline's own JSONL files; any bad line raises, naming the file and line."""
    rows = []
    for line in _json_lines(Path(path), str(path)):
        if line.error:
            raise ValueError(line.error)
        if not line.blank:
            rows.append(line.value)
    return rows


def write_jsonl(path: Path, rows) -> Path:
    """Write rows atomically (temp file + rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _looks_local(source: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else that is missing is a mistyped path."""
    return (source.startswith((".", "/", "~")) or source.lower().endswith(ROW_FILE_SUFFIXES)
            or not _HUB_ID.fullmatch(source))


def _text_lines(path: Path, source: str) -> Iterator[tuple[int, str, str]]:
    """(1-based number, text with its line ending, UTF-8 error or "") for each line of ``path``.

    Splits on ``\\n`` only: JSON strings may hold U+2028 and other characters ``str.splitlines`` breaks at."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text, error = raw.decode("utf-8"), ""
            except UnicodeDecodeError as e:
                text = raw.decode("utf-8", "backslashreplace")
                error = (f"{source}:{number}: byte {e.start + 1} of the line is not UTF-8 (the file is in another "
                         "encoding?); re-save the file as UTF-8")
            yield number, text.removeprefix(_BOM), error


def _json_lines(path: Path, source: str) -> Iterator[_Line]:
    """Every line of a JSON Lines file, parsed: the one line parser behind both readers."""
    for number, text, error in _text_lines(path, source):
        line = _Line(number, text.rstrip("\r\n"), error=error)
        if not line.error and not line.blank:
            line.value, line.error = _parse_object(line.text, f"{source}:{number}", cut=not text.endswith("\n"))
        yield line


def _parse_object(text: str, where: str, cut: bool) -> tuple[object, str]:
    """(the JSON object in ``text``, "") or (None, why it is not one); ``cut``: the file ends inside this line."""
    try:
        value = json.loads(text, strict=False)  # raw control characters in strings: kept here, stripped by _finish
    except json.JSONDecodeError as e:
        hint = " in the file's last line, which has no line ending: was the file cut off while being written?" if cut else ""
        return None, f"{where}: not valid JSON ({e.msg}, column {e.colno}){hint}; fix or remove the line"
    if not isinstance(value, dict):
        kind = "null" if value is None else f"a JSON {type(value).__name__}"
        return None, f"{where}: holds {kind}, not an object; each line must be one {{...}} row"
    return value, ""


def _read_json_lines(path: Path, source: str) -> RowRead:
    read = RowRead()
    rows = []
    for line in _json_lines(path, source):
        if line.error:
            read.rejected.append({"_raw": line.text, "_source": source, "_line": line.number, "_reason": line.error})
        elif line.blank:
            read.blank_lines += 1
        else:
            rows.append((line.number, line.value))
    return _finish(source, rows, read)


def _read_json(path: Path, source: str) -> RowRead:
    data = path.read_bytes().removeprefix(_BOM.encode())
    if data.lstrip()[:1] == b"[":
        try:
            items = json.loads(data.decode("utf-8"), strict=False)
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise ValueError(f"{source}:{line}: bytes that are not UTF-8; re-save the file as UTF-8") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); fix the file, or write "
                             "one row per line as JSON Lines (.jsonl) so that a bad row costs only itself") from e
        read = RowRead()
        rows = []
        for number, item in enumerate(items, 1):
            if isinstance(item, dict):
                rows.append((number, item))
            else:
                read.rejected.append({"_raw": json.dumps(item), "_source": source, "_line": number, "_reason":
                                      f"{source}: item {number} of the list is {type(item).__name__}, not an object; "
                                      "make every item a {...} row"})
        return _finish(source, rows, read)
    try:
        value = json.loads(data.decode("utf-8"), strict=False)
    except (UnicodeDecodeError, json.JSONDecodeError):
        value = None
    if isinstance(value, dict):
        return _finish(source, [(1, value)])
    return _read_json_lines(path, source)  # JSON Lines under a .json name


def _read_csv(path: Path, source: str) -> RowRead:
    read = RowRead()
    lines = list(_text_lines(path, source))
    header_text = lines[0][1] if lines else ""
    delimiter = max(_CSV_DELIMITERS, key=header_text.count) if any(map(header_text.count, _CSV_DELIMITERS)) else ","
    header: list[str] | None = None
    rows = []
    for start, end, cells, problem in _csv_records(lines, delimiter, source):
        raw = "".join(text for _, text, _ in lines[start - 1 : end]).rstrip("\r\n")
        problem = problem or next((error for _, _, error in lines[start - 1 : end] if error), "")
        if not raw.strip() and not problem:
            read.blank_lines += 1
        elif header is None:
            if problem:
                raise ValueError(f"{problem}; the header line must be readable to read any row")
            header = [name.strip() for name in cells]
            if len(set(header)) < len(header):
                raise ValueError(f"{source}:{start}: the header names a column twice ({header}); rename one")
        elif problem or len(cells) != len(header):
            problem = problem or (f"{source}:{start}: has {len(cells)} cells but the header has {len(header)}; quote "
                                  f"cells that hold {delimiter!r} and give every row one cell per column")
            read.rejected.append({"_raw": raw, "_source": source, "_line": start, "_reason": problem})
        else:
            rows.append((start, dict(zip(header, cells, strict=True))))
    return _finish(source, rows, read)


def _csv_records(lines: list[tuple[int, str, str]], delimiter: str, source: str):
    """(first line, last line, cells or None, quoting error or "") per CSV record; a bad record costs only itself."""
    reader = csv.reader((text for _, text, _ in lines), delimiter=delimiter, strict=True)
    end = 0
    while True:
        start = end + 1
        try:
            cells, problem = next(reader), ""
        except StopIteration:
            return
        except csv.Error as e:  # the reader has consumed the bad line; it resumes at the next one
            cells = None
            problem = (f"{source}:{start}: an unclosed quote runs from here to the end of the file; close the quote"
                       if "end of data" in str(e) else
                       f"{source}:{start}: CSV quoting error ({e}); put quotes around the whole cell and double any "
                       "quote inside it")
        end = reader.line_num
        yield start, end, cells, problem


def _finish(source: str, numbered: Iterable[tuple[int, dict]], read: RowRead | None = None) -> RowRead:
    """``read`` with the (line, row) pairs added as plain, control-character-free rows tagged with ``_source`` and ``_line``."""
    read = read or RowRead()
    for number, row in numbered:
        row, stripped = _clean(_plain(row))
        read.control_chars_stripped += stripped
        read.rows.append(row | {"_source": source, "_line": number})
    return read


def _plain(value):
    """What JSON can hold: Arrow's dates, bytes, decimals and images become their text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _clean(value) -> tuple[object, bool]:
    """``value`` with C0 controls (but tab, newline, carriage return) removed from every string, and whether any were."""
    if isinstance(value, str):
        cleaned = _CONTROL.sub("", value)
        return cleaned, cleaned != value
    if isinstance(value, dict):
        pairs = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(c for _, c in pairs.values())
    if isinstance(value, list):
        items = [_clean(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False
