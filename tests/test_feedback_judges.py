"""The feedback judges (rubric parsing, pairwise, reward model), the model pool and the item cache
(sampling with the prompt prefilled once: tests/test_sampling_streams.py)."""

from __future__ import annotations

import pytest

from dpo_core.common.io import read_jsonl, write_jsonl
from dpo_core.common.records import PreferencePair, PromptRecord
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.item_cache import ItemCache, item_key
from dpo_core.feedback.stage import collect_feedback
from dpo_core.inference.backends import LocalChat
from dpo_core.inference.config import ClientOptions, SamplingConfig
from dpo_core.judges.pairwise import PairwiseJudge
from dpo_core.judges.reward_model import RewardModelJudge
from dpo_core.judges.rubric import RubricJudge, judge_prompt, parse_ratings
from dpo_core.judges.verdicts import SetAside, Verdict

PROMPT = PromptRecord("p1", [{"role": "user", "content": "Name a colour."}])

GOOD = """Here are my annotations.

#### Output for Text 1
Rating: 4
Rationale: Names a colour.

It is short, which is fine.
#### Output for Text 2
**Rating:** 2
**Rationale:** Off topic."""


def test_rubric_parse_finds_blocks_by_header_despite_preamble_and_blank_lines():
    parsed, problem = parse_ratings(GOOD, 2)
    assert problem == "" and [r for r, _ in parsed] == [4, 2]
    assert parsed[0][1] == "Names a colour.\n\nIt is short, which is fine." and parsed[1][1] == "Off topic."


@pytest.mark.parametrize(("text", "n", "problem"), [
    (GOOD, 3, "expected blocks for texts 1 to 3"),
    (GOOD.replace("Rating: 4", "Rating: 6"), 2, "'6' is not an integer from 1 to 5"),
    (GOOD.replace("Rating: 4", "Rating: 4.5"), 2, "not an integer"),
    (GOOD.replace("Rating: 4", "Rating: 4\nRating: 5"), 2, "expected one 'Rating:' line, found 2"),
    (GOOD.replace("Text 2", "Text 3"), 2, "found [1, 3]"),
    ("I think text 1 is better.", 2, "found none"),
])
def test_rubric_parse_refuses_what_does_not_match_the_candidates(text, n, problem):
    parsed, why = parse_ratings(text, n)
    assert parsed is None and problem in why


def test_rubric_prompt_and_version():
    messages = judge_prompt("honesty", "Name a colour.", ["red", "blue"])
    assert "<text 2> blue" in messages[1]["content"] and "#### Output for Text 2" in messages[1]["content"]
    judge = RubricJudge(LocalChat(None, None, "x"), ["helpfulness", "honesty"])
    assert judge.version.startswith("ultrafeedback-v1+") and judge.name == "rubric[helpfulness,honesty]@x"
    with pytest.raises(ValueError, match="aspects"):
        RubricJudge(LocalChat(None, None, "x"), ["style"])


def test_pairwise_judge_asks_both_orders_and_sets_unparseable_items_aside(tiny_model):
    chat = LocalChat.from_ref(tiny_model)
    sent = []
    original = chat.run
    chat.run = lambda convs, n, on_done: sent.append(len(convs)) or original(convs, n, on_done)
    judge = PairwiseJudge(chat, max_retries=1, max_new_tokens=4)
    results = {}
    judge.judge([(PROMPT, ["red", "blue", "green"])], results.__setitem__)
    assert sent == [6, 6]  # C(3, 2) comparisons in two orders, then one re-ask of all six
    (result,) = results.values()
    assert isinstance(result, SetAside) and not result.retryable and len(result.raw) >= 2
    assert judge.stats["judge_answers_unparsed"] == 12


def test_pairwise_scores_count_wins_ties_and_order_disagreement():
    judge = PairwiseJudge(LocalChat(None, None, "x"))
    # texts 0 and 1: 0 wins in both orders; 0 vs 2: the orders disagree (tie); 1 vs 2: a tie both ways
    verdicts = {(0, 1, True): "A", (0, 1, False): "B", (0, 2, True): "A", (0, 2, False): "A",
                (1, 2, True): "C", (1, 2, False): "C"}
    verdict = judge._scores(3, verdicts, [])
    assert verdict.scores == [pytest.approx(0.75), pytest.approx(0.25), pytest.approx(0.5)]
    assert judge.stats["position_disagreements"] == 1 and judge.stats["comparisons"] == 3


def test_reward_model_judge_scores_with_a_sequence_classifier(tmp_path):
    from tiny import make_tiny_reward_model

    judge = RewardModelJudge(str(make_tiny_reward_model(tmp_path / "rm")))
    results = {}
    judge.judge([(PROMPT, ["red", "a much longer answer about blue"])], results.__setitem__)
    verdict = results[0]
    assert isinstance(verdict, Verdict) and len(verdict.scores) == 2
    rewards = [d["reward"] for d in verdict.details]
    direct = judge.rewards([PROMPT.messages + [{"role": "assistant", "content": t}]
                            for t in ("red", "a much longer answer about blue")])
    assert rewards == pytest.approx(direct) and rewards[0] != rewards[1]
    assert [s > 0.5 for s in verdict.scores] == [r > 0 for r in rewards]


def test_model_pool_keeps_each_candidates_generator(tiny_model, tmp_path):
    from tiny import make_tiny_model

    other = str(make_tiny_model(tmp_path / "other", seed=1))
    prompts = write_jsonl(tmp_path / "p.jsonl", [PromptRecord("a", PROMPT.messages, [{"kind": "lowercase", "args": {}}])
                                                 .to_dict()])
    cfg = FeedbackConfig(generators=[other], sampling=SamplingConfig(num_samples=3, max_new_tokens=6, temperature=1.0),
                         binarize="all_pairs")
    result = collect_feedback(cfg, tiny_model, prompts, tmp_path / "out")
    assert [c["model"] for c in read_jsonl(result.candidates_path)] == [tiny_model] * 3 + [other] * 3
    for pair in map(lambda r: PreferencePair(**r), read_jsonl(result.pairs_path)):
        assert pair.chosen_model in (tiny_model, other) and pair.judge.startswith("verifiable/")


def test_item_cache_survives_reopening(tmp_path):
    key = item_key("sample", prompt=PROMPT.messages, model="m", sampling={"t": 1}, k=0)
    assert key != item_key("sample", prompt=PROMPT.messages, model="m", sampling={"t": 1}, k=1)
    cache = ItemCache(tmp_path / "c.sqlite")
    cache.put(key, {"text": "red"})
    cache.close()
    again = ItemCache(tmp_path / "c.sqlite")
    assert again.get(key) == {"text": "red"} and again.get("nope") is None
    assert (again.hits, again.misses, len(again)) == (1, 1, 1)


def test_a_local_model_retrained_in_place_is_not_served_from_the_cache(tmp_path):
    """Local generators and judges are keyed by their weights, not their names: a model folder
    overwritten in place (a policy retrained into the same path) samples afresh, a new reward model
    judges afresh, and an unchanged one is all cache hits. Candidates keep the name they were given."""
    from tiny import make_tiny_model, make_tiny_reward_model

    policy, rm = make_tiny_model(tmp_path / "policy"), make_tiny_reward_model(tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "p.jsonl", [PromptRecord(f"p{i}", [{"role": "user", "content": f"Colour {i}?"}])
                                                 .to_dict() for i in range(2)])
    cfg = FeedbackConfig(sampling=SamplingConfig(num_samples=2, max_new_tokens=8, temperature=1.0), judge=f"reward:{rm}",
                         cache_path=str(tmp_path / "items.sqlite"))

    def run() -> tuple[tuple[int, int], list[str]]:
        result = collect_feedback(cfg, str(policy), prompts, tmp_path / "out")
        candidates = read_jsonl(result.candidates_path)
        assert {c["model"] for c in candidates} == {str(policy)}
        return (result.stats["cache_hits"], result.stats["cache_misses"]), [c["text"] for c in candidates]

    assert run()[0] == (0, 6)  # 2 prompts x 2 samples, 2 judgements
    again, first = run()
    assert again == (6, 0)
    judge_before = PairwiseJudge(LocalChat.from_ref(str(policy))).cache_id

    make_tiny_model(policy, seed=1)  # retrained in place: same folder, new weights
    retrained, texts = run()
    assert retrained == (0, 6) and texts != first
    assert PairwiseJudge(LocalChat.from_ref(str(policy))).cache_id != judge_before  # a local LLM judge as well

    make_tiny_reward_model(rm, seed=1)
    assert run()[0] == (4, 2)  # the samples are reused; the new reward model judges again


def test_rubric_verdict_averages_aspects_into_zero_to_one():
    judge = RubricJudge(LocalChat(None, None, "x"), ["helpfulness", "honesty"])
    verdict = judge._verdict({"helpfulness": [(5, "clear"), (1, "wrong")], "honesty": [(3, "hedged"), (1, "made up")]},
                             ["raw"])
    assert verdict.scores == [pytest.approx(0.75), 0.0]
    assert verdict.details[0] == {"ratings": {"helpfulness": 5, "honesty": 3},
                                  "rationale": "helpfulness: clear | honesty: hedged"}


def test_generator_specs():
    from dpo_core.feedback.generators import LocalGenerator, OpenAIGenerator, make_generator

    options = ClientOptions()
    assert make_generator("embedded:smollm2-135m-instruct", options).name == "embedded:smollm2-135m-instruct"
    assert isinstance(make_generator("local:/models/a", options), LocalGenerator)
    assert make_generator("local:/models/a", options).name == "/models/a"
    assert isinstance(make_generator("openai:http://127.0.0.1:8000/v1|m", options), OpenAIGenerator)
    with pytest.raises(ValueError, match="openai:<base_url>"):
        make_generator("openai:http://x", options)
