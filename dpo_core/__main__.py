"""Run one stage from a JSON job file: ``python -m dpo_core STAGE JOB.json OUT_DIR``.

This is how the pipeline runs heavy stages in a child process: the job file holds the stage
config and its input paths; the stage's result is written to ``OUT_DIR/result.json`` once it has finished (and its
checkpoints, if any, are then dropped).
Progress is printed one line per batch or step so the parent can relay it.

SFT and DPO also run data-parallel (or FSDP2-sharded, with ``sharding: fsdp``) under a launcher,
each process on its share of every step: ``accelerate launch --multi_gpu --num_processes 8 -m
dpo_core dpo JOB.json OUT_DIR`` or ``torchrun --nproc-per-node 8 -m dpo_core dpo JOB.json OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from dpo_core.common.protocol import ERROR_FILE, PARENT_ENV, die_with_parent, error_record, report_progress, write_result

STAGES = ("prepare-model", "feedback", "sft", "dpo", "evaluate")


def run_stage(stage: str, job: dict, out_dir: Path):
    """Import only the stage asked for: each loads its own model stack."""
    cfg, inputs = job["config"], job["inputs"]
    if stage == "prepare-model":
        from dpo_core.common.templates import PreparedModel, apply_chat_template_setting

        return PreparedModel(apply_chat_template_setting(inputs["model"], cfg["chat_template"]))
    if stage == "feedback":
        from dpo_core.feedback.config import FeedbackConfig
        from dpo_core.feedback.stage import collect_feedback

        return collect_feedback(FeedbackConfig(**cfg), inputs["model"], inputs["prompts_path"], out_dir, report_progress)
    if stage == "sft":
        from dpo_core.train.config import SFTConfig
        from dpo_core.train.sft import train_sft

        return train_sft(SFTConfig(**cfg), inputs["model"], out_dir, conversations_path=inputs.get("conversations_path"),
                         pairs_paths=inputs.get("pairs_paths", []), prompts_path=inputs.get("prompts_path"),
                         candidates_path=inputs.get("candidates_path"), on_step=report_progress)
    if stage == "dpo":
        from dpo_core.train.config import DPOConfig
        from dpo_core.train.dpo.trainer import train_dpo

        return train_dpo(DPOConfig(**cfg), inputs["model"], inputs["pairs_paths"], out_dir, report_progress,
                         reference_model=inputs.get("reference_model"))
    if stage == "evaluate":
        from dpo_core.evaluate.config import EvalConfig
        from dpo_core.evaluate.stage import evaluate

        return evaluate(EvalConfig(**cfg), inputs["models"], inputs["eval_path"], out_dir,
                        inputs.get("heldout_pairs_path"), inputs.get("dpo_beta", 0.1),
                        transfer_path=inputs.get("transfer_path"))
    raise SystemExit(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpo_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("job", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    if PARENT_ENV in os.environ:  # started by a pipeline task (not a user's shell, where nohup must work)
        die_with_parent()  # under a launcher: dies with the launcher, which dies with the task
    import transformers

    from dpo_core.train import distributed

    transformers.utils.logging.disable_progress_bar()  # one line per batch or step is enough in a run log
    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_stage(args.stage, json.loads(args.job.read_text()), args.out_dir)
    except Exception as exc:  # the parent quotes it and retries only a network fault; the traceback follows
        (args.out_dir / ERROR_FILE).write_text(json.dumps(error_record(exc), indent=2))
        raise
    if distributed.is_main():  # under accelerate launch every process ran the stage; one reports
        write_result(args.out_dir, asdict(result))
        shutil.rmtree(args.out_dir / "checkpoints", ignore_errors=True)  # the result stands: nothing to resume
        print(f"{args.stage} finished: {args.out_dir}", file=sys.stderr)
    distributed.finish()


if __name__ == "__main__":
    main()
