"""Task: build the prompt dataset (in-process: it is fast and loads no model)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
from prefect import task

from dpo_core.common.digest import digest_files, digest_json
from dpo_core.common.io import read_jsonl
from dpo_core.data.build_dataset import BUILTIN, BuildConfig, build_dataset
from dpo_core.data.instructions import INSTRUCTION_SET_PATH
from tasks.plumbing.results import DatasetRef
from tasks.plumbing.stage import markdown_table, output_dir, publish, retry_transient, stage_cache
from tasks.plumbing.tracking import experiment_id, stage_run

STAGE, ENTRY = "build-dataset", "dpo_core.data.build_dataset"  # ENTRY's import closure is the code version in the cache key


@task(name=STAGE, cache_policy=stage_cache(ENTRY), persist_result=True, retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_transient)
def build_dataset_task(cfg: BuildConfig, source_digest: str, parent_run_id: str) -> DatasetRef:
    out = output_dir(STAGE, ENTRY, asdict(cfg), source_digest)
    with stage_run(STAGE, parent_run_id, asdict(cfg)) as run_id:
        result = build_dataset(cfg, out)
        mlflow.log_metrics({f"rows/{k}": v for k, v in result.counts.items()})
        mlflow.log_params({f"kind/{field}": kind for field, kind in result.kinds.items()})
        for name, context, path in (("prompts-train", "train", result.train_path), ("prompts-eval", "eval", result.eval_path),
                                    ("prompts-transfer", "transfer", result.transfer_path),
                                    ("sft-conversations", "train", result.sft_path),
                                    ("preference-pairs", "train", result.pairs_path)):
            frame = pd.DataFrame(read_jsonl(path)) if path else pd.DataFrame()
            if len(frame):
                mlflow.log_input(mlflow.data.from_pandas(frame, source=path, name=name, digest=result.digest),
                                 context=context)
        rejected = read_jsonl(result.rejected_path)
        if rejected:
            mlflow.log_table(pd.DataFrame(rejected).astype(str), "rejected_rows.json")
        mlflow.log_artifacts(str(out), "dataset")
        publish(STAGE, run_id, experiment_id(), markdown_table(result.counts)
                + f"\n\nRejected rows with their reasons: `{result.rejected_path}`")
    return DatasetRef(train_path=result.train_path, eval_path=result.eval_path, sft_path=result.sft_path,
                      pairs_path=result.pairs_path, transfer_path=result.transfer_path, digest=result.digest,
                      run_id=run_id, counts=result.counts)


def source_digest(cfg: BuildConfig) -> str:
    """Digest of the files a build reads, so an edited source file invalidates the cached build."""
    names = [cfg.source, cfg.sft_source, cfg.pairs_source, cfg.eval_source,
             cfg.transfer_source]  # a hub id's name is all we know of it
    paths = [INSTRUCTION_SET_PATH if name == BUILTIN else Path(name) for name in names if name]
    files = []
    for p in paths:
        files += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
    return digest_json([names, digest_files(files) if files else None])
