"""Build the dataset alone: load, validate, dedupe, decontaminate and split prompts."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from dpo_core.data.build_dataset import BuildConfig
from flows.presets import CPU_DEMO
from tasks.build_dataset import build_dataset_task, source_digest
from tasks.plumbing.results import DatasetRef
from tasks.plumbing.tracking import flow_parent_run


@flow(name="build-dataset")
def build_dataset_flow(data: BuildConfig = CPU_DEMO["data"]) -> DatasetRef:
    """Build the prompt dataset; its run id feeds the feedback, SFT and evaluate flows.

    Args:
        data: Where the prompts come from and how they are cleaned and split.
    """
    with flow_parent_run({"data": asdict(data)}) as parent:
        return build_dataset_task(data, source_digest(data), parent)


if __name__ == "__main__":  # the same as `dpo-pipeline build-dataset`: --help lists every setting
    import sys

    from flows.cli import main

    main(["build-dataset", *sys.argv[1:]])
