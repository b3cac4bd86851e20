"""Which held-out prompts the evaluation answers: those something can score.

The checks score prompts with verifiable instructions; a judge or a reward model scores any
prompt. Without either, prompts without instructions are left out (answering them would cost
generation and measure nothing), and a set where no prompt is left is refused here, before a model
runs, naming the settings that would score it. Free of torch, so a flow can check its data early.
"""

from __future__ import annotations

from pathlib import Path

from dpo_core.common.io import read_jsonl
from dpo_core.common.records import PromptRecord
from dpo_core.evaluate.config import EvalConfig


def load_prompts(cfg: EvalConfig, eval_path: Path) -> list[PromptRecord]:
    prompts = [PromptRecord(**r) for r in read_jsonl(eval_path)]
    scorable = prompts if cfg.judge or cfg.reward_model else [p for p in prompts if p.instructions]
    if not scorable:
        raise ValueError(
            f"{eval_path}: none of the {len(prompts)} held-out prompts has verifiable instructions, so nothing can "
            "score the answers: set evaluation.judge= (local:<model ref>, vllm:<model ref> or "
            "openai:<base_url>|<model>, an LLM judge) or evaluation.reward_model= (a local reward model)")
    return scorable[: cfg.max_prompts]


def write_heldout(source: str, out_dir: Path) -> tuple[Path, int, int]:
    """A team's prompts file (any accepted prompt shape, dpo_core.data.shapes) as ``eval.jsonl`` of
    PromptRecords, rows it cannot use in ``rejected.jsonl`` with their line and reason; returns the
    path, the prompts kept and the rows rejected. For evaluating a model on a file directly."""
    from dpo_core.common.io import write_jsonl
    from dpo_core.data.shapes import PROMPTS
    from dpo_core.data.sources import load_source

    loaded = load_source(source, "prompts", PROMPTS)
    write_jsonl(Path(out_dir) / "rejected.jsonl", loaded.rejected)
    if not loaded.items:
        raise ValueError(f"{source}: no usable prompts in {loaded.rows_in} rows; see {Path(out_dir) / 'rejected.jsonl'}")
    path = write_jsonl(Path(out_dir) / "eval.jsonl", (item.record.to_dict() for item in loaded.items))
    return path, len(loaded.items), len(loaded.rejected)
