"""Chat backends a judge talks to: a local transformers model, or any OpenAI-compatible server
(vLLM, TGI, Ollama, llama.cpp server, hosted APIs).

The API key is read from an environment variable named in the config, never stored on the
object's public fields, and never part of ``repr``, logs or MLflow params.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from dpo_core.generation import SamplingConfig, generate
from dpo_core.models import load_model, load_tokenizer, resolve_model


class LocalChat:
    """Greedy, batched answers from a loaded local model."""

    def __init__(self, model, tokenizer, name: str = "local", batch_size: int = 8):
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size

    @classmethod
    def from_ref(cls, model_ref: str) -> LocalChat:
        path = resolve_model(model_ref)
        return cls(load_model(path), load_tokenizer(path), f"local:{model_ref}")

    def complete(self, conversations: list[list[dict]], max_new_tokens: int = 256) -> list[str]:
        cfg = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=self.batch_size)
        return [g[0].text for g in generate(self.model, self.tokenizer, conversations, cfg)]


@dataclass
class OpenAIChat:
    """POST /v1/chat/completions with retries (exponential backoff) on 429/5xx and timeouts."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable holding the key (may be unset for local servers)
    timeout_s: float = 60.0
    max_retries: int = 3
    _key: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self._key = os.environ.get(self.api_key_env)
        self.name = f"openai:{self.model}"

    def complete(self, conversations: list[list[dict]], max_new_tokens: int = 256) -> list[str]:
        return [self._one(c, max_new_tokens) for c in conversations]

    def _one(self, messages: list[dict], max_new_tokens: int) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0}
        for attempt in range(self.max_retries + 1):
            try:
                r = httpx.post(f"{self.base_url.rstrip('/')}/chat/completions", json=body, headers=headers,
                               timeout=self.timeout_s)
                if r.status_code < 400:
                    return r.json()["choices"][0]["message"]["content"]
                if r.status_code != 429 and r.status_code < 500:
                    raise RuntimeError(f"{self.name}: HTTP {r.status_code} {r.text[:200]}")
            except (httpx.TimeoutException, httpx.TransportError):
                if attempt == self.max_retries:
                    raise
            time.sleep(min(2**attempt, 30))
        raise RuntimeError(f"{self.name}: no answer after {self.max_retries + 1} attempts")


def make_backend(spec: str):
    """``local:<model ref>`` or ``openai:<base_url>|<model>`` (key from OPENAI_API_KEY)."""
    kind, _, rest = spec.partition(":")
    if kind == "local":
        return LocalChat.from_ref(rest)
    if kind == "openai":
        base_url, _, model = rest.partition("|")
        if not model:
            raise ValueError(f"judge {spec!r}: use openai:<base_url>|<model>")
        return OpenAIChat(base_url, model)
    raise ValueError(f"judge {spec!r}: use local:<model ref> or openai:<base_url>|<model>")
