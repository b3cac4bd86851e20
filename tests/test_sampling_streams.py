"""Local sampling draws each answer from a random stream of its own (dpo_core.inference.generation):
the same settings give the same answers however prompts are batched, ordered or resumed, and the
per-row sampler draws tokens with the probabilities temperature and top-p give them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dpo_core.common.io import read_jsonl
from dpo_core.common.models import load_model, load_tokenizer
from dpo_core.data.build_dataset import BuildConfig, build_dataset
from dpo_core.feedback.config import FeedbackConfig
from dpo_core.feedback.stage import collect_feedback
from dpo_core.inference.config import SamplingConfig
from dpo_core.inference.generation import StreamSampler, generate, sample_uniforms

CHATS = [[{"role": "user", "content": text}] for text in [  # shortest first, as generate batches them
    "Hi",
    "Name a colour.",
    "Tell me about rivers, please.",
    "Write a long and detailed essay about the history of the Roman empire and the reasons for its fall.",
]]
SAMPLING = SamplingConfig(num_samples=3, max_new_tokens=12, temperature=1.0, batch_size=4, seed=3)
LOGITS = torch.tensor([1.5, 3.0, -2.0, 0.5, 2.0, -1.0])


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)


def _texts(generations) -> list[list[str]]:
    return [[g.text for g in samples] for samples in generations]


def test_a_prompts_samples_do_not_depend_on_its_batch(tiny):
    model, tokenizer = tiny
    together = _texts(generate(model, tokenizer, CHATS, SAMPLING))
    alone = [_texts(generate(model, tokenizer, [chat], SAMPLING))[0] for chat in CHATS]  # no padding at all
    reversed_in_threes = _texts(generate(model, tokenizer, CHATS[::-1], replace(SAMPLING, batch_size=3)))[::-1]
    assert together == alone == reversed_in_threes


def test_a_run_split_in_two_calls_draws_what_one_call_draws(tiny):
    """What a resumed run does: the prompts it lacks, in other batches, after a first call did the rest."""
    model, tokenizer = tiny
    one_call = _texts(generate(model, tokenizer, CHATS, SAMPLING))
    first, rest = [0, 3], [2, 1]
    two_calls = (_texts(generate(model, tokenizer, [CHATS[i] for i in first], replace(SAMPLING, batch_size=1)))
                 + _texts(generate(model, tokenizer, [CHATS[i] for i in rest], SAMPLING)))
    assert [one_call[i] for i in first + rest] == two_calls


def test_sample_k_is_the_same_whatever_the_number_of_samples(tiny):
    """With K=1 generate prefills no shared cache; sample 0 of K=3 still draws the same answer."""
    model, tokenizer = tiny
    three = _texts(generate(model, tokenizer, CHATS, SAMPLING))
    one = _texts(generate(model, tokenizer, CHATS, replace(SAMPLING, num_samples=1)))
    assert [samples[:1] for samples in three] == one


def test_samples_differ_across_k_and_seeds(tiny):
    model, tokenizer = tiny
    seed_3 = _texts(generate(model, tokenizer, CHATS, SAMPLING))
    seed_4 = _texts(generate(model, tokenizer, CHATS, replace(SAMPLING, seed=4)))
    assert all(len(set(samples)) == SAMPLING.num_samples for samples in seed_3 + seed_4)
    assert all(a != b for a, b in zip(sum(seed_3, []), sum(seed_4, []), strict=True))
    assert not torch.equal(sample_uniforms(3, 0, "a", 8), sample_uniforms(3, 0, "b", 8))  # the prompt seeds too


def test_prefill_once_matches_prefilling_every_sample(tiny):
    """The prompt cache repeated for K samples gives what ``model.generate`` draws with the same
    streams when it prefills each of the K rows itself."""
    model, tokenizer = tiny
    ours = _texts(generate(model, tokenizer, CHATS, SAMPLING))
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    k = SAMPLING.num_samples
    uniforms = torch.stack([sample_uniforms(SAMPLING.seed, j, t, SAMPLING.max_new_tokens) for t in texts
                            for j in range(k)])
    sampler = StreamSampler(uniforms, enc["input_ids"].shape[1], SAMPLING.temperature, SAMPLING.top_p)
    plain = model.generate(input_ids=enc["input_ids"].repeat_interleave(k, 0),
                           attention_mask=enc["attention_mask"].repeat_interleave(k, 0), logits_processor=[sampler],
                           max_new_tokens=SAMPLING.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=[tokenizer.eos_token_id])[:, enc["input_ids"].shape[1]:]
    plain_texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in plain]
    assert sum(ours, []) == plain_texts


def test_greedy_is_plain_greedy(tiny):
    model, tokenizer = tiny
    cfg = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=12, batch_size=len(CHATS))
    ours = [samples[0].text for samples in generate(model, tokenizer, CHATS, cfg)]
    tokenizer.padding_side = "left"
    enc = tokenizer([tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHATS],
                    return_tensors="pt", padding=True, add_special_tokens=False)
    plain = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=[tokenizer.eos_token_id])[:, enc["input_ids"].shape[1]:]
    assert ours == [tokenizer.decode(t, skip_special_tokens=True).strip() for t in plain]


def _draw(uniforms: torch.Tensor, temperature: float, top_p: float, logits: torch.Tensor = LOGITS) -> torch.Tensor:
    """The sampler's first token for each uniform, every row holding ``logits``; checks it leaves one finite score."""
    prompt = torch.zeros(len(uniforms), 5, dtype=torch.long)
    sampler = StreamSampler(uniforms[:, None], prompt.shape[1], temperature, top_p)
    scores = sampler(prompt, logits.expand(len(uniforms), -1))
    assert (scores.isfinite().sum(-1) == 1).all()
    return scores.argmax(-1)


def _expected(temperature: float, top_p: float) -> torch.Tensor:
    """Nucleus sampling worked out by hand: the most likely tokens whose probability reaches top_p, renormalised."""
    probs = (LOGITS / temperature).softmax(-1)
    ranked = probs.argsort(descending=True)
    before = probs[ranked].cumsum(-1) - probs[ranked]  # mass of the more likely tokens
    kept = torch.zeros_like(probs)
    kept[ranked[before < top_p]] = probs[ranked[before < top_p]]
    return kept / kept.sum()


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (1.5, 0.8)])
def test_sampler_draws_tokens_with_their_probabilities(temperature, top_p):
    draws = 200_000
    uniforms = torch.rand(draws, generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(_draw(uniforms, temperature, top_p), minlength=len(LOGITS)) / draws
    expected = _expected(temperature, top_p)
    assert (frequencies[expected == 0] == 0).all()  # what top-p drops is never drawn
    torch.testing.assert_close(frequencies, expected, rtol=0, atol=0.005)  # ~4.5 standard errors at p = 0.5


def test_small_top_p_draws_only_the_most_likely_token():
    extremes = torch.tensor([0.0, 1 - 2**-24])  # the smallest and largest float32 torch.rand gives
    uniforms = torch.cat([extremes, torch.rand(1000, generator=torch.Generator().manual_seed(0))])
    assert (_draw(uniforms, 1.0, 0.05) == LOGITS.argmax()).all()


def test_extreme_uniforms_never_draw_a_dropped_token():
    """Dropped tokens at both ends of the vocabulary; u = 0 and the largest u pick the kept ends."""
    logits = torch.tensor([-9.0, 3.0, 1.0, 2.0, -9.0])
    tokens = _draw(torch.tensor([0.0, 1 - 2**-24]), 1.0, 0.9, logits)
    assert tokens.tolist() == [3, 1]  # the last and the first token top-p keeps


def test_a_resumed_feedback_run_draws_the_uninterrupted_runs_samples(tiny_model, tmp_path):
    """The feedback stage killed mid-generation and started again regenerates only the missing samples,
    in other batches: its candidates are still those of a run never interrupted."""
    data = Path(__file__).parent / "data"
    sources = BuildConfig(source=str(data / "prompts.jsonl"), eval_source=str(data / "eval_prompts.jsonl"))
    prompts = build_dataset(sources, tmp_path / "data").train_path
    sampling = SamplingConfig(num_samples=2, max_new_tokens=8, temperature=1.0, batch_size=3)
    whole = collect_feedback(FeedbackConfig(sampling=sampling), tiny_model, prompts, tmp_path / "whole" / "out")

    def kill_in_the_second_batch(done: int, total: int) -> None:
        if done == 8:  # sample 8 is lost: its prompt's first sample is stored, its second is not
            raise KeyboardInterrupt

    cfg = FeedbackConfig(sampling=sampling, cache_path=str(tmp_path / "resumed" / "items.sqlite"))
    with pytest.raises(KeyboardInterrupt):
        collect_feedback(cfg, tiny_model, prompts, tmp_path / "resumed" / "out", on_progress=kill_in_the_second_batch)
    resumed = collect_feedback(cfg, tiny_model, prompts, tmp_path / "resumed" / "out")
    assert resumed.stats["cache_hits"] == 7  # the killed run's samples, read back
    assert read_jsonl(resumed.candidates_path) == read_jsonl(whole.candidates_path)
    assert resumed.digest == whole.digest
