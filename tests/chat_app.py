"""A tiny model behind the OpenAI chat API (``POST /v1/chat/completions``, ``GET /v1/models``), for
the tests that wrap it with injected faults (tests/fault_server.py) and for in-process client
tests. It answers one request at a time. What the project ships for serving is vLLM's server
(dpo_core.inference.serve); this app exists because a fault needs a server the test controls.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from dpo_core.common.chat import render_prompt
from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.inference.config import SamplingConfig
from dpo_core.inference.generation import generate

_fresh_seed = random.SystemRandom()  # untouched by whatever seeds the process's global generators


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None  # None: a fresh random seed; the same seed and settings give the same answer


def create_app(model_ref: str, served_name: str | None = None) -> FastAPI:
    path = resolve_model(model_ref)
    model, tokenizer = load_model(path, inference=True), load_tokenizer(path)
    name = served_name or model_ref
    lock = threading.Lock()  # one generate at a time: the model is not re-entrant
    app = FastAPI(title=f"dpo-pipeline OpenAI-compatible server ({name})")

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "dpo-pipeline"}]}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> dict:
        messages = [m.model_dump() for m in request.messages]
        # without a seed, a fresh one per request: a fixed default would give every unseeded request
        # (K samples of one prompt, say) the same answer
        seed = _fresh_seed.randrange(2**31) if request.seed is None else request.seed
        try:
            cfg = SamplingConfig(num_samples=1, max_new_tokens=request.max_tokens, temperature=request.temperature,
                                 top_p=request.top_p, batch_size=1, seed=seed)
        except ValueError as exc:  # out of the sampler's bounds: the request's fault, not worth a retry
            raise HTTPException(status_code=400, detail=str(exc)) from None
        with lock:
            answer = generate(model, tokenizer, [messages], cfg)[0][0]
        # the tokens generate() fed the model (apply_chat_template(tokenize=True) returns a dict of tensors)
        prompt_tokens = len(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": "length" if answer.n_tokens >= request.max_tokens else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": answer.n_tokens,
                      "total_tokens": prompt_tokens + answer.n_tokens},
        }

    return app
