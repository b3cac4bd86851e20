"""A Prefect progress artifact that follows a child stage's progress lines."""

from __future__ import annotations

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class Progress:
    def __init__(self, stage: str, unit: str):
        self.stage, self.unit = stage, unit
        self.artifact_id = None

    def __enter__(self):
        self.artifact_id = create_progress_artifact(0.0, key=f"{self.stage}-progress",
                                                    description=f"{self.stage}: {self.unit} done")
        return self

    def update(self, line: dict) -> None:
        pct = 100.0 * line["done"] / max(line["total"], 1)
        update_progress_artifact(self.artifact_id, pct, description=f"{self.stage}: {line['done']}/{line['total']} {self.unit}")

    def __exit__(self, *exc):
        return False
