"""Candidate generators behind one interface: a local model run by transformers or by vLLM's
engine, or any OpenAI-compatible chat endpoint (vLLM, TGI, Ollama, llama.cpp server, hosted APIs).

``run(requests, sampling, on_sample)`` takes (chat, sample index) requests and calls
``on_sample(request index, Sample | Failure)`` as each sample is ready, so the caller stores it
before the rest arrive. A pool of generators (UltraFeedback drew 4 answers from 4 different
models) is a list of specs; every candidate keeps its generator's name, and cached samples are keyed
by its ``cache_id`` (dpo_core.inference.backends).

Specs: ``local:<model ref>``, ``vllm:<model ref>`` or ``openai:<base_url>|<model>``; a bare model
reference runs on the stage's engine (dpo_core.inference.config.EngineConfig).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.inference.backends import endpoint_id, local_model_id, make_client
from dpo_core.inference.config import ClientOptions, EngineConfig, SamplingConfig, openai_endpoint
from dpo_core.inference.generation import generate
from dpo_core.inference.openai_client import Failure, Usage

Request = tuple[list[dict], int]  # (chat, sample index k in 0..K-1)


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int


class LocalGenerator:
    """Batched sampling from a local model, loaded for each ``run`` and freed after it (the stage's
    judge or next generator may need the memory): all K samples of a prompt come from one batch,
    so a request for any of them generates the prompt's K together."""

    def __init__(self, model_ref: str):
        self.model_ref, self.name = model_ref, model_ref
        self.usage = Usage()

    @cached_property
    def cache_id(self) -> str:
        """Fingerprinted on first use, as the model is loaded on first use."""
        return local_model_id(self.model_ref)

    def run(self, requests: list[Request], sampling: SamplingConfig, on_sample: Callable[[int, Sample | Failure], None]) -> None:
        if not requests:
            return
        path = resolve_model(self.model_ref)
        chats, done = _by_chat(requests, self.usage, on_sample)
        generate(load_model(path, inference=True), load_tokenizer(path), chats, sampling, on_prompt=done)


class VLLMGenerator:
    """Sampling with vLLM's engine in this process: a prompt's K samples are one request (n=K)."""

    def __init__(self, model_ref: str, engine: EngineConfig):
        self.model_ref, self.name, self.engine = model_ref, model_ref, engine
        self.usage = Usage()

    @cached_property
    def cache_id(self) -> str:
        from dpo_core.inference.vllm_engine import engine_id

        return engine_id(resolve_model(self.model_ref), self.engine)

    def run(self, requests: list[Request], sampling: SamplingConfig, on_sample: Callable[[int, Sample | Failure], None]) -> None:
        from dpo_core.inference.vllm_engine import vllm_engine

        if not requests:
            return
        chats, done = _by_chat(requests, self.usage, on_sample)
        vllm_engine(resolve_model(self.model_ref), self.engine).generate(
            chats, num_samples=sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens, seed=sampling.seed, on_prompt=done)


def _by_chat(requests: list[Request], usage: Usage, on_sample) -> tuple[list[list[dict]], Callable]:
    """The distinct chats among ``requests``, and the callback that hands each chat's K generations
    (or its failure) to the requests that asked for them."""
    chats: dict[str, list[dict]] = {}
    wanted: dict[str, list[tuple[int, int]]] = {}  # chat -> [(request index, k)]
    for i, (chat, k) in enumerate(requests):
        key = repr(chat)
        chats.setdefault(key, chat)
        wanted.setdefault(key, []).append((i, k))
    keys = list(chats)

    def done(p, generations):
        usage.requests += 1
        if isinstance(generations, Failure):
            usage.failures += 1
            for i, _ in wanted[keys[p]]:
                on_sample(i, generations)
            return
        usage.completion_tokens += sum(g.n_tokens for g in generations)
        for i, k in wanted[keys[p]]:
            on_sample(i, Sample(generations[k].text, generations[k].n_tokens))

    return list(chats.values()), done


class OpenAIGenerator:
    """One request per sample, seeded ``sampling.seed + k`` (servers that honour ``seed``, such as
    vLLM, then give the same sample again)."""

    def __init__(self, base_url: str, model: str, options: ClientOptions):
        self.client = make_client(base_url, model, options)
        self.name, self.usage, self.cache_id = self.client.name, self.client.usage, endpoint_id(self.client)

    def run(self, requests: list[Request], sampling: SamplingConfig, on_sample: Callable[[int, Sample | Failure], None]) -> None:
        bodies = [{"messages": chat, "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                   "top_p": sampling.top_p, "seed": sampling.seed + k} for chat, k in requests]
        self.client.run(bodies, lambda i, r: on_sample(i, r if isinstance(r, Failure) else Sample(r.text, r.completion_tokens)))


def make_generator(spec: str, options: ClientOptions, engine: EngineConfig | None = None):
    """``openai:<base_url>|<model>``, ``local:<model ref>``, ``vllm:<model ref>``, or a bare model
    reference (on ``engine``)."""
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        return OpenAIGenerator(*openai_endpoint(spec, "generator"), options)
    if kind not in ("local", "vllm"):
        engine = engine or EngineConfig()
        kind, rest = engine.resolved(), spec
    return VLLMGenerator(rest, engine or EngineConfig()) if kind == "vllm" else LocalGenerator(rest)
