"""Chat backends that judges (and candidate generation) talk to: a local model run by transformers
or by vLLM's engine, or any OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp server, hosted APIs).

All answer a list of conversations through ``run(conversations, max_new_tokens, on_done)``,
which calls ``on_done(index, text or Failure)`` as each answer is ready (after its batch, for a
local model; the moment its request returns, for a server), so callers store every finished
item before the rest arrive. ``complete`` is the same as one list.

Each backend (and each candidate generator) has a ``name``, shown in records, and a ``cache_id``,
what its answers depend on, for cache keys: a local model's weights, a server's URL and model name.

The API key is read from the environment variable named in ``api_key_env`` and held out of
``repr``, logs and MLflow params.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dpo_core.common.models import load_model, load_tokenizer, model_fingerprint, resolve_model
from dpo_core.inference.config import ClientOptions, EngineConfig, SamplingConfig, openai_endpoint
from dpo_core.inference.generation import generate
from dpo_core.inference.openai_client import Failure, OpenAIClient, Usage


def local_model_id(model_ref: str) -> str:
    """A local model's ``cache_id``: its weights' fingerprint, not its name, so a folder retrained in
    place is another model (the DPO reference log-prob cache keys it the same way)."""
    return f"local:{model_fingerprint(resolve_model(model_ref))}"


def endpoint_id(client: OpenAIClient) -> str:
    """A served model's ``cache_id``: the server and the model name (its weights are out of sight)."""
    return f"openai:{client.base_url}|{client.model}"


class LocalChat:
    """Greedy, batched answers from a loaded local model."""

    def __init__(self, model, tokenizer, name: str = "local", batch_size: int = 8, cache_id: str | None = None):
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self.cache_id = cache_id  # None for a model handed over in memory: its answers are not cached
        self.usage = Usage()

    @classmethod
    def from_ref(cls, model_ref: str) -> LocalChat:
        path = resolve_model(model_ref)
        return cls(load_model(path, inference=True), load_tokenizer(path), f"local:{model_ref}", cache_id=local_model_id(path))

    def run(self, conversations: list[list[dict]], max_new_tokens: int, on_done: Callable[[int, str | Failure], None]) -> None:
        cfg = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=self.batch_size)

        def done(i, generations):
            self.usage.requests += 1
            self.usage.completion_tokens += generations[0].n_tokens
            on_done(i, generations[0].text)

        generate(self.model, self.tokenizer, conversations, cfg, on_prompt=done)

    def complete(self, conversations: list[list[dict]], max_new_tokens: int = 256) -> list[str]:
        return _collect(self, conversations, max_new_tokens)


class VLLMChat:
    """Greedy answers from vLLM's engine in this process (dpo_core.inference.vllm_engine)."""

    def __init__(self, model_ref: str, engine: EngineConfig | None = None, name: str | None = None):
        from dpo_core.inference.vllm_engine import engine_id

        self.path, self.engine = resolve_model(model_ref), engine or EngineConfig()
        self.name, self.cache_id = name or f"vllm:{model_ref}", engine_id(self.path, self.engine)
        self.usage = Usage()

    def run(self, conversations: list[list[dict]], max_new_tokens: int, on_done: Callable[[int, str | Failure], None]) -> None:
        from dpo_core.inference.vllm_engine import vllm_engine

        def done(i, generations):
            self.usage.requests += 1
            if isinstance(generations, Failure):
                self.usage.failures += 1
                on_done(i, generations)
            else:
                self.usage.completion_tokens += generations[0].n_tokens
                on_done(i, generations[0].text)

        vllm_engine(self.path, self.engine).generate(conversations, num_samples=1, temperature=0.0, top_p=1.0,
                                                     max_new_tokens=max_new_tokens, seed=0, on_prompt=done)

    def complete(self, conversations: list[list[dict]], max_new_tokens: int = 256) -> list[str]:
        return _collect(self, conversations, max_new_tokens)


def make_client(base_url: str, model: str, options: ClientOptions) -> OpenAIClient:
    """The client for one endpoint and model, its key read from ``options.api_key_env``."""
    return OpenAIClient(base_url, model, api_key=os.environ.get(options.api_key_env), timeout_s=options.timeout_s,
                        max_retries=options.max_retries, concurrency=options.concurrency,
                        requests_per_s=options.requests_per_s)


class OpenAIChat:
    """Greedy (temperature 0) answers from an OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str, options: ClientOptions | None = None):
        self.client = make_client(base_url, model, options or ClientOptions())
        self.name, self.usage, self.cache_id = self.client.name, self.client.usage, endpoint_id(self.client)

    def __repr__(self) -> str:
        return f"OpenAIChat({self.client.base_url!r}, {self.client.model!r})"

    def run(self, conversations: list[list[dict]], max_new_tokens: int, on_done: Callable[[int, str | Failure], None]) -> None:
        bodies = [{"messages": c, "max_tokens": max_new_tokens, "temperature": 0.0} for c in conversations]
        self.client.run(bodies, lambda i, r: on_done(i, r if isinstance(r, Failure) else r.text))

    def complete(self, conversations: list[list[dict]], max_new_tokens: int = 256) -> list[str]:
        return _collect(self, conversations, max_new_tokens)


def _collect(backend, conversations, max_new_tokens) -> list[str]:
    """Answers in order; a request that failed for good raises, naming its reason."""
    answers: list[str | Failure] = [Failure("no answer")] * len(conversations)
    backend.run(conversations, max_new_tokens, answers.__setitem__)
    failed = [(i, a.reason) for i, a in enumerate(answers) if isinstance(a, Failure)]
    if failed:
        raise RuntimeError(f"{backend.name}: {len(failed)} of {len(answers)} requests failed; first: {failed[0]}")
    return answers


def make_backend(spec: str, options: ClientOptions | None = None, engine: EngineConfig | None = None):
    """``local:<model ref>``, ``vllm:<model ref>`` (run with ``engine``'s settings) or
    ``openai:<base_url>|<model>`` (key from ``options.api_key_env``)."""
    kind, _, rest = spec.partition(":")
    if kind == "local":
        return LocalChat.from_ref(rest)
    if kind == "vllm":
        return VLLMChat(rest, engine)
    if kind == "openai":
        return OpenAIChat(*openai_endpoint(spec, "judge"), options)
    raise ValueError(f"judge {spec!r}: use local:<model ref>, vllm:<model ref> or openai:<base_url>|<model>")
