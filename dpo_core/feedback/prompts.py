"""Which prompts the feedback stage's judge can score: checked first, before any model runs
(and by the lifecycle flow right after the build, before SFT). Free of torch."""

from __future__ import annotations

from pathlib import Path

from dpo_core.common.io import read_jsonl
from dpo_core.common.records import PromptRecord


def judgeable_prompts(prompts: list[PromptRecord], judge: str, source) -> list[PromptRecord]:
    """The prompts ``judge`` can score. The verifiable judge scores only prompts with instructions:
    when none has any, stop before generating anything and name the setting that fixes it."""
    if judge != "verifiable":
        return prompts
    judgeable = [p for p in prompts if p.instructions]
    if not judgeable:
        raise ValueError(f"{source}: none of its {len(prompts)} prompts has verifiable instructions, so the default "
                         "judge cannot score their answers: set feedback.judge to rubric:<backend>, pairwise:<backend> "
                         "or reward:<model ref> (a backend is local:<model ref>, vllm:<model ref> or openai:<base_url>|<model>)")
    if len(judgeable) < len(prompts):
        print(f"feedback: {len(prompts) - len(judgeable)} of {len(prompts)} prompts have no verifiable instructions and "
              "are skipped by the verifiable judge (feedback.judge=rubric:... would score them)", flush=True)
    return judgeable


def check_judge(judge: str, prompts_path: Path) -> None:
    """Raise, naming ``feedback.judge``, when ``judge`` can score none of the prompts in ``prompts_path``."""
    judgeable_prompts([PromptRecord(**r) for r in read_jsonl(prompts_path)], judge, prompts_path)
