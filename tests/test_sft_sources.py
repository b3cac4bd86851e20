"""What SFT trains on: the team's conversations, a teacher's answers (distilled SFT), each
prompt's best candidate on any judge's scale; the errors when a source gives nothing; truncation
counted."""

from __future__ import annotations

import pytest

from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.train.config import SFTConfig, sft_needs_feedback, sft_sources
from dpo_core.train.sft import Chat, select_sft_examples, train_sft


def _prompt(pid: str) -> dict:
    return {"id": pid, "messages": [{"role": "user", "content": f"Question {pid}?"}], "instructions": []}


def _cand(pid: str, index: int, model: str, text: str, score: float) -> dict:
    return {"prompt_id": pid, "index": index, "model": model, "text": text, "n_tokens": 3, "score": score}


@pytest.fixture()
def feedback(tmp_path):
    """Prompts a-d answered by two generators, scored like a reward model's sigmoid, in (0, 1):
    a has a clear best (small's 0.62), b is all tied at 0.5, c's best is big's 0.2, d has one
    candidate. The file lists big's samples of a out of index order."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [_prompt(p) for p in "abcd"])
    cands = write_jsonl(tmp_path / "candidates.jsonl", [
        _cand("a", 1, "big", "big a1", 0.47), _cand("a", 0, "big", "big a0", 0.31), _cand("a", 2, "small", "small a2", 0.62),
        _cand("b", 0, "big", "big b0", 0.5), _cand("b", 1, "small", "small b1", 0.5),
        _cand("c", 0, "small", "small c0", 0.12), _cand("c", 1, "small", "small c1", 0.12),
        _cand("c", 2, "big", "big c2", 0.2),
        _cand("d", 0, "small", "small d0", 0.9)])
    return prompts, cands


def _select(cfg: SFTConfig, conversations, prompts, candidates, pairs=()):
    return select_sft_examples(cfg, sft_sources(cfg, conversations is not None, bool(pairs)), conversations, pairs,
                               prompts, candidates)


def _answers(chats: list[Chat]) -> list[str]:
    return [c.answer for c in chats]


def test_teacher_source_takes_the_teachers_first_sample_of_each_prompt_whatever_its_score(feedback):
    prompts, cands = feedback
    found = _select(SFTConfig(sources=["teacher"], teacher="big"), None, prompts, cands)
    assert list(found) == ["teacher"]
    assert _answers(found["teacher"]) == ["big a0", "big b0", "big c2"]  # d: big never answered it
    assert found["teacher"][0].messages == _prompt("a")["messages"]


def test_unset_min_score_takes_the_best_of_each_prompt_not_all_tied(feedback):
    """Reward-model scores never reach 1.0, the old default threshold: unset, the best source takes
    a's and c's best and drops b (all tied) and d (one candidate is tied with itself)."""
    prompts, cands = feedback
    found = _select(SFTConfig(), None, prompts, cands)
    assert _answers(found["best"]) == ["small a2", "big c2"]
    with pytest.raises(ValueError, match=r"best gave 0 of 4 judged prompts: no best candidate reached min_score=1.0"):
        _select(SFTConfig(min_score=1.0), None, prompts, cands)


def test_explicit_min_score_keeps_its_meaning(feedback):
    """The best candidate (first of equals) of every prompt that reaches min_score, tied or not."""
    prompts, cands = feedback
    found = _select(SFTConfig(min_score=0.5), None, prompts, cands)
    assert _answers(found["best"]) == ["small a2", "big b0", "small d0"]


def test_no_examples_says_which_source_gave_how_many_and_what_to_change(feedback, tmp_path):
    prompts, _ = feedback
    tied = write_jsonl(tmp_path / "tied.jsonl", [_cand("a", i, "big", f"t{i}", 0.4) for i in range(3)])
    empty = write_jsonl(tmp_path / "chats.jsonl", [])
    with pytest.raises(ValueError) as err:
        _select(SFTConfig(sources=["conversations", "best"]), empty, prompts, tied)
    message = str(err.value)
    assert f"conversations gave 0: {empty} holds no conversations" in message
    assert "best gave 0 of 1 judged prompts: every prompt's candidates are tied" in message
    assert "sources" in message


def test_a_teacher_that_wrote_no_candidate_is_named_with_the_generators_there(feedback):
    prompts, cands = feedback
    with pytest.raises(ValueError, match=r"teacher='gpt' wrote none .* \['big', 'small'\]: set teacher"):
        _select(SFTConfig(sources=["teacher", "best"], teacher="gpt"), None, prompts, cands)


def test_a_source_without_its_input_file_is_an_error_naming_it(feedback):
    prompts, cands = feedback
    with pytest.raises(ValueError, match="'conversations' needs conversations_path"):
        _select(SFTConfig(sources=["conversations", "best"]), None, prompts, cands)
    with pytest.raises(ValueError, match="'best' needs prompts_path and candidates_path"):
        _select(SFTConfig(), None, None, None)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"teacher": "big", "sources": ["best"]}, "teacher"),  # read only by the teacher source
    ({"sources": ["teacher"]}, "teacher"),  # the teacher source without a teacher
    ({"sources": ["conversations"], "min_score": 0.5}, "min_score"),  # read only by the best source
    ({"sources": ["best", "best"]}, "sources"),
    ({"sources": []}, "sources"),
    ({"sources": ["gold"]}, "sources"),
])
def test_config_refuses_settings_no_source_reads(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SFTConfig(**kwargs)


def test_sft_trains_on_every_source_and_counts_truncated_examples(tiny_model, feedback, tmp_path):
    """Two conversations (one with a first user turn far over max_length), the teacher's three
    answers (its first answer to a far over max_length) and the best source's two: 7 examples, 2
    of them cut."""
    prompts, cands = feedback
    cands = write_jsonl(tmp_path / "long_candidates.jsonl", [r | {"text": "calm " * 200} if r["text"] == "big a0" else r
                                                              for r in read_jsonl(cands)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"id": "short", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                                     {"role": "assistant", "content": "Goodbye."}]},
        {"id": "long", "messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "Ok."}]}])
    cfg = SFTConfig(sources=["conversations", "teacher", "best"], teacher="big", max_length=64, max_steps=2,
                    batch_size=4)
    result = train_sft(cfg, tiny_model, tmp_path / "out", conversations_path=chats, prompts_path=prompts,
                       candidates_path=cands)
    m = result.metrics
    assert (m["examples_conversations"], m["examples_teacher"], m["examples_best"]) == (2, 3, 2)
    assert m["train_examples"] == 7 and m["truncated_examples"] == 2


@pytest.mark.parametrize(("cfg", "conversations", "pairs", "expected", "feedback_first"), [
    (SFTConfig(), False, False, ["best"], True),  # the demo: rejection-sampling fine-tuning
    (SFTConfig(), True, True, ["conversations"], False),  # a team's chats come first
    (SFTConfig(teacher="gpt"), True, False, ["conversations", "teacher"], True),
    (SFTConfig(teacher="gpt"), False, True, ["teacher"], True),
    (SFTConfig(), False, True, ["chosen"], False),  # pairs alone: their chosen side
    (SFTConfig(sources=["best", "chosen"]), True, True, ["best", "chosen"], True),  # as set
])
def test_unset_sources_follow_what_the_data_holds(cfg, conversations, pairs, expected, feedback_first):
    assert sft_sources(cfg, conversations, pairs) == expected
    assert sft_needs_feedback(expected) is feedback_first


def test_min_score_without_the_best_source_in_what_the_data_holds_is_named():
    with pytest.raises(ValueError, match="min_score=1.0 is read only by the best source"):
        sft_sources(SFTConfig(min_score=1.0), True, False)


def test_chosen_source_trains_on_the_pairs_chosen_side(feedback, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
         "chosen": [{"role": "assistant", "content": f"Good answer {i}."}],
         "rejected": [{"role": "assistant", "content": f"Bad answer {i}."}], "score_chosen": 1.0, "score_rejected": 0.0}
        for i in range(3)])
    found = _select(SFTConfig(), None, None, None, pairs=[pairs])
    assert list(found) == ["chosen"]
    assert _answers(found["chosen"]) == ["Good answer 0.", "Good answer 1.", "Good answer 2."]
    assert found["chosen"][1].messages == [{"role": "user", "content": "Question 1?"}]
