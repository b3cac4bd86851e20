"""Row I/O: JSONL, CSV, Parquet, a saved ``datasets`` folder, or a hub dataset id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

ROW_FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")  # what read_rows reads, besides folders


def read_rows(source: str, split: str = "train") -> list[dict]:
    """Read ``source`` into a list of dicts, choosing the reader by extension or folder kind."""
    path = Path(source).expanduser()
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{path}: no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        return ds.to_list()
    if path.exists():
        suffix = path.suffix.lower()
        if suffix in {".jsonl", ".ndjson"}:
            return read_jsonl(path)
        if suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, list):
                raise ValueError(f"{path}: a .json file must hold a list of rows")
            return data
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False).to_dict(orient="records")
        if suffix == ".parquet":
            return pd.read_parquet(path).to_dict(orient="records")
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use {', '.join(ROW_FILE_SUFFIXES)} or a datasets folder")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{source} is not a local file or folder, and HF_HUB_OFFLINE=1 forbids the hub")
    import datasets

    return datasets.load_dataset(source, split=split).to_list()


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with Path(path).open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
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
