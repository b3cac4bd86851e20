"""Stage 3, SFT: supervised fine-tuning on any mix of four sources (``SFTConfig.sources``, or
what the data holds: ``dpo_core.train.config.sft_sources``).

  * conversations: the team's chats (``SFTRecord`` JSONL), trained on every assistant turn with
    an assistant-only loss. A conversation runs as one sequence: the context before its first
    assistant turn is the prompt, the rest the answer, and a loss mask keeps the later system and
    user turns as context that is read but never predicted;
  * chosen: the chosen answer of each of the team's preference pairs, after its prompt (a team
    with pairs alone fine-tunes on their better side, as the DPO paper does when no SFT data exists);
  * teacher: distilled SFT as in Zephyr (Tunstall et al. 2023, dSFT): the first sample (lowest
    index) each prompt got from the ``teacher`` generator of the feedback stage's pool, whatever
    the judge scored it: one answer per prompt, as UltraChat has;
  * best: rejection-sampling fine-tuning, the DPO paper's recipe when no SFT data exists: each
    prompt's best judged candidate, if it reaches ``min_score``, or (unset) if the prompt's
    candidates are not all tied, which means something on any judge's scale.

The loss is the mean cross-entropy over the loss tokens of each optimizer step (every micro-batch
and process together), so every token weighs the same however the step is split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dpo_core.common.chat import overflow, tokenize_answers, tokenize_conversation, truncate
from dpo_core.common.io import read_jsonl
from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.common.records import JudgedCandidate, Message, PreferencePair, PromptRecord, SFTRecord
from dpo_core.train.batching import Batch, Example, answer_token_logps, collate, to_device
from dpo_core.train.config import SFTConfig, sft_sources
from dpo_core.train.loop import Totals, TrainResult, device, fit, load_device, prepare_for_training, save_trained


@dataclass(frozen=True)
class Chat:
    """One SFT example before tokenization: a conversation trained on every assistant turn
    (``answer`` None), or a prompt and the one answer trained on."""

    messages: list[Message]
    answer: str | None = None


def read_conversations(path: Path) -> list[Chat]:
    """The team's conversations, each validated as an SFTRecord (ends with an assistant turn)."""
    return [Chat(SFTRecord(**row).messages) for row in read_jsonl(path)]


def chosen_answers(pairs_paths: Sequence[Path]) -> list[Chat]:
    """The chosen answer of every pair, after its prompt."""
    return [Chat(pair.prompt, pair.chosen[0]["content"])
            for path in pairs_paths for pair in (PreferencePair(**row) for row in read_jsonl(path))]


def teacher_answers(prompts: dict[str, PromptRecord], candidates: list[JudgedCandidate], teacher: str) -> list[Chat]:
    """The teacher's first sample of each prompt it answered, by prompt id."""
    first: dict[str, JudgedCandidate] = {}
    for c in candidates:
        if c.model == teacher and (c.prompt_id not in first or c.index < first[c.prompt_id].index):
            first[c.prompt_id] = c
    return [Chat(prompts[pid].messages, c.text) for pid, c in sorted(first.items())]


def best_candidates(prompts: dict[str, PromptRecord], candidates: list[JudgedCandidate],
                    min_score: float | None) -> list[Chat]:
    """The best candidate of each prompt (the first of equals) that reaches ``min_score``; with
    ``min_score`` None, of each prompt whose candidates do not all score the same."""
    by_prompt: dict[str, list[JudgedCandidate]] = {}
    for c in candidates:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    chats = []
    for pid, judged in sorted(by_prompt.items()):
        best = max(judged, key=lambda c: c.score)  # max keeps the first of equals
        tied = all(c.score == best.score for c in judged)
        keep = best.score >= min_score if min_score is not None else not tied
        if keep:
            chats.append(Chat(prompts[pid].messages, best.text))
    return chats


def select_sft_examples(cfg: SFTConfig, sources: list[str], conversations_path: Path | None,
                        pairs_paths: Sequence[Path], prompts_path: Path | None,
                        candidates_path: Path | None) -> dict[str, list[Chat]]:
    """The examples of each of ``sources``; an error saying which source gave how many and what to
    change when none gave any."""
    needs = {"conversations": {"conversations_path": conversations_path},
             "chosen": {"pairs_paths": pairs_paths or None},
             "teacher": {"prompts_path": prompts_path, "candidates_path": candidates_path},
             "best": {"prompts_path": prompts_path, "candidates_path": candidates_path}}
    for source in sources:
        missing = [name for name, path in needs[source].items() if path is None]
        if missing:
            raise ValueError(f"SFT source {source!r} needs {' and '.join(missing)}, not given: pass "
                             f"{'them' if len(missing) > 1 else 'it'} or drop {source} from sources")
    prompts, candidates = {}, []
    if {"teacher", "best"} & set(sources):
        prompts = {r["id"]: PromptRecord(**r) for r in read_jsonl(prompts_path)}
        candidates = [JudgedCandidate(**r) for r in read_jsonl(candidates_path)]
    generators = sorted({c.model for c in candidates})
    if "teacher" in sources and cfg.teacher not in generators:
        raise ValueError(f"teacher={cfg.teacher!r} wrote none of the candidates in {candidates_path}; its generators "
                         f"are {generators}: set teacher to one of them")
    found = {
        "conversations": lambda: read_conversations(conversations_path),
        "chosen": lambda: chosen_answers(pairs_paths),
        "teacher": lambda: teacher_answers(prompts, candidates, cfg.teacher),
        "best": lambda: best_candidates(prompts, candidates, cfg.min_score),
    }
    examples = {source: found[source]() for source in sources}
    if not any(examples.values()):
        why = {  # the teacher source is not among them: a teacher that wrote candidates gives examples
            "conversations": f"conversations gave 0: {conversations_path} holds no conversations",
            "chosen": f"chosen gave 0: {', '.join(map(str, pairs_paths))} hold no pairs",
            "best": (f"best gave 0 of {len({c.prompt_id for c in candidates})} judged prompts: "
                     + (f"no best candidate reached min_score={cfg.min_score}; lower min_score or unset it"
                        if cfg.min_score is not None else
                        "every prompt's candidates are tied; sample more candidates per prompt or use a judge "
                        "with finer scores")),
        }
        raise ValueError("no SFT examples: " + "; ".join(why[s] for s in sources)
                         + ". Add another source to sources or give the ones listed more to work with")
    return examples


def encode_chat(tokenizer, chat: Chat, max_length: int) -> tuple[Example, bool]:
    """The collatable example (prompt, [answer], [loss mask]) fitted to ``max_length``, and
    whether it had to be cut."""
    if chat.answer is None:
        prompt, answer, mask = tokenize_conversation(tokenizer, chat.messages)
    else:
        prompt, (answer,) = tokenize_answers(tokenizer, chat.messages, [chat.answer])
        mask = [True] * len(answer)
    cut = overflow(prompt, [answer], max_length) > 0
    prompt, (answer,) = truncate(prompt, [answer], max_length)
    return (prompt, [answer], [mask[: len(answer)]]), cut


def train_sft(
    cfg: SFTConfig, model_ref: str, out_dir: Path, *, conversations_path: Path | None = None,
    pairs_paths: Sequence[Path] = (), prompts_path: Path | None = None, candidates_path: Path | None = None,
    on_step: Callable[[int, int, dict], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model_ref`` on its sources: conversations from ``conversations_path`` (SFTRecord
    JSONL), chosen from the team's ``pairs_paths``, teacher and best from the feedback stage's
    ``candidates_path`` and the ``prompts_path`` they answer."""
    torch.manual_seed(cfg.seed)
    sources = sft_sources(cfg, conversations_path is not None, bool(pairs_paths))
    chats = select_sft_examples(cfg, sources, conversations_path, pairs_paths, prompts_path, candidates_path)
    path = resolve_model(model_ref)
    tokenizer = load_tokenizer(path)
    model = prepare_for_training(load_model(path, device=load_device(cfg)), cfg)
    encoded = [encode_chat(tokenizer, chat, cfg.max_length) for source in sources for chat in chats[source]]
    examples = [example for example, _ in encoded]

    def make_batch(items):
        return to_device(collate(items, tokenizer.pad_token_id), device())

    def step_loss(batch: Batch, totals: Totals):
        logps, _ = answer_token_logps(model, batch)
        loss = -logps.sum() / totals.tokens  # this batch's share of the step's cross-entropy per loss token
        return loss, {"loss": loss.item(), "num_tokens": float(batch.num_tokens)}

    def loss_tokens(example) -> int:
        _, _, (mask,) = example
        return sum(mask)

    metrics = fit(model, examples, make_batch, step_loss, loss_tokens, cfg, out_dir, on_step)
    metrics |= {"train_examples": len(examples), "truncated_examples": sum(cut for _, cut in encoded)}
    metrics |= {f"examples_{source}": len(chats[source]) for source in sources}
    return save_trained(model, tokenizer, cfg, out_dir, metrics)
