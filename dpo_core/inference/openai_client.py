"""A client for any OpenAI-compatible chat endpoint (vLLM, TGI, Ollama, llama.cpp's server,
hosted APIs): many requests in flight, a timeout per request, retries, a rate limit.

Transient failures are retried with exponential backoff and full jitter: connection errors,
timeouts, HTTP 429 and 5xx, and 200 replies whose body is cut off or is not a chat completion.
Other 4xx replies fail the request at once. Each request ends in ``on_done`` as soon as it
finishes, so callers can store it durably before the others return.

Written on httpx rather than the ``openai`` SDK: the SDK is not a dependency here, and it treats
a truncated 200 body as final rather than retrying it. The API key is held out of ``repr``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Failure:
    reason: str  # why the request was given up, with the last error


@dataclass
class Usage:
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    failures: int = 0  # requests given up
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Transient(Exception):
    """Worth retrying: the same request may succeed."""


class _Permanent(Exception):
    """Not worth retrying: the server refused the request itself."""


@dataclass
class OpenAIClient:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    max_retries: int = 4
    concurrency: int = 8  # requests in flight at once
    requests_per_s: float | None = None  # None: no rate limit
    backoff_s: float = 0.5  # first retry waits up to this; doubles each time (full jitter)
    max_backoff_s: float = 30.0
    usage: Usage = field(default_factory=Usage)

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def run(self, bodies: list[dict], on_done: Callable[[int, Reply | Failure], None]) -> None:
        """POST each body (``messages``, ``max_tokens``, sampling fields; ``model`` is added) and call
        ``on_done(index, reply or failure)`` as each one finishes."""
        if bodies:
            asyncio.run(self._run_all(bodies, on_done))

    async def _run_all(self, bodies, on_done) -> None:
        gate = asyncio.Semaphore(self.concurrency)
        limiter = _RateLimiter(self.requests_per_s)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        async with httpx.AsyncClient(base_url=self.base_url.rstrip("/"), headers=headers,
                                     timeout=self.timeout_s) as http:
            async def one(i: int, body: dict) -> None:
                async with gate:
                    result = await self._with_retries(http, limiter, {"model": self.model} | body)
                on_done(i, result)

            await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

    async def _with_retries(self, http, limiter, body) -> Reply | Failure:
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.retries += 1
                await asyncio.sleep(random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))))
            await limiter.wait()
            self.usage.requests += 1
            try:
                return self._parse(await http.post("/chat/completions", json=body))
            except (httpx.TimeoutException, httpx.TransportError, _Transient) as exc:
                last = f"{type(exc).__name__}: {exc}"[:300]
            except _Permanent as exc:
                self.usage.failures += 1
                return Failure(str(exc))
        self.usage.failures += 1
        return Failure(f"gave up after {self.max_retries + 1} attempts; last error {last}")

    def _parse(self, response: httpx.Response) -> Reply:
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise _Permanent(f"HTTP {response.status_code}: {response.text[:300]}")
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message content is not a string")
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise _Transient(f"malformed reply ({type(exc).__name__}): {response.text[:120]!r}") from exc
        usage = data.get("usage") or {}
        reply = Reply(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                      str(choice.get("finish_reason", "")))
        self.usage.prompt_tokens += reply.prompt_tokens
        self.usage.completion_tokens += reply.completion_tokens
        return reply


class _RateLimiter:
    """At most ``rate`` request starts per second, evenly spaced (a tiny leaky bucket)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)
