"""Tell Prefect that new prompt or preference data has landed: the lifecycle deployments
retrain on it (their trigger expects the event ``dpo.data.landed``).

    python -m deployments.data_events emit path/to/prompts.jsonl     # once, from a script or CI
    python -m deployments.data_events watch incoming/                  # for every new file in a folder

Over the API, POST the same event to ``$PREFECT_API_URL/events`` (``prefect event emit`` on the
command line does that too).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prefect.events import emit_event

from dpo_core.common.io import ROW_FILE_SUFFIXES

EVENT = "dpo.data.landed"


def emit(path: Path) -> None:
    path = Path(path).resolve()
    emit_event(event=EVENT, resource={"prefect.resource.id": f"dpo.data.{path.name}", "prefect.resource.name": path.name},
               payload={"path": str(path), "bytes": path.stat().st_size})
    print(f"emitted {EVENT} for {path}", flush=True)


def watch(folder: Path, poll_s: float = 2.0, settle_s: float = 2.0) -> None:
    """Emit once for every data file that appears or changes in ``folder``, when its size has
    stopped changing for ``settle_s`` (a file still being copied is not announced)."""
    folder.mkdir(parents=True, exist_ok=True)
    announced: dict[Path, tuple[int, float]] = {p: _stat(p) for p in _data_files(folder)}  # existing files: not new
    seen: dict[Path, tuple[tuple[int, float], float]] = {}
    print(f"watching {folder.resolve()} for new data", flush=True)
    while True:
        now = time.monotonic()
        for path in _data_files(folder):
            stat = _stat(path)
            if announced.get(path) == stat:
                continue
            first = seen.get(path)
            if first is None or first[0] != stat:
                seen[path] = (stat, now)
            elif now - first[1] >= settle_s:
                emit(path)
                announced[path] = stat
                del seen[path]
        time.sleep(poll_s)


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ROW_FILE_SUFFIXES)


def _stat(path: Path) -> tuple[int, float]:
    s = path.stat()
    return s.st_size, s.st_mtime


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.data_events", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("emit").add_argument("path", type=Path)
    watch_cmd = sub.add_parser("watch")
    watch_cmd.add_argument("folder", type=Path)
    watch_cmd.add_argument("--poll-s", type=float, default=2.0)
    args = parser.parse_args()
    emit(args.path) if args.command == "emit" else watch(args.folder, args.poll_s)


if __name__ == "__main__":
    main()
