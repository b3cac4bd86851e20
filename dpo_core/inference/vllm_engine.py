"""vLLM's offline engine, in the stage's own process: candidate sampling, evaluation answers and
local judges (``vllm:<model ref>``, or any model the stage runs when its engine is vllm).

Prompts are rendered with the model's chat template and tokenized exactly as the local backend
does (dpo_core.common.chat.render_prompt) and handed to vLLM as token ids, so both engines see
the same prompt, and generation stops at the same end-of-turn tokens. A prompt's K samples are
one request with ``n=K`` (the prompt is prefilled once) and the sampling seed, so the same
settings draw the same samples. Answers come back one call of ``chunk_prompts`` prompts at a time,
so a stage stores each call's answers before the next starts.

One engine is kept per process: asking for another model shuts the previous one down first, so a
stage that answers with several models (evaluation), or samples with one model and judges with
another, holds one engine's memory at a time.

vLLM's offline engine runs one replica per process, so with ``data_parallel_size`` above 1 the
model is served instead by vLLM's own server (dpo_core.inference.serve) on loopback, in the
stage's process group (a cancelled or finished stage takes it down), and reached through the
OpenAI client.
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Callable

import torch
from transformers import GenerationConfig

from dpo_core.common.chat import render_prompt
from dpo_core.common.models import compute_device, load_tokenizer, model_fingerprint
from dpo_core.inference.config import EngineConfig
from dpo_core.inference.generation import Generation, eos_ids
from dpo_core.inference.openai_client import Failure

_engine: VLLMEngine | ServedEngine | None = None


def vllm_engine(model_path: str, cfg: EngineConfig) -> VLLMEngine | ServedEngine:
    """The process's engine for ``model_path``, started (and the previous one shut down) if needed."""
    global _engine
    if _engine is not None and (_engine.path, _engine.cfg) == (model_path, cfg):
        return _engine
    release_engine()
    if torch.cuda.is_initialized():  # what a transformers model freed: vLLM checks the free memory at start
        torch.cuda.empty_cache()
    _engine = (ServedEngine if cfg.data_parallel_size > 1 else VLLMEngine)(model_path, cfg)
    return _engine


@atexit.register  # a stage that ends without releasing stops its engine (or server) on the way out
def release_engine() -> None:
    """Shut the process's engine down and free its memory (before a transformers model loads)."""
    global _engine
    if _engine is not None:
        try:
            _engine.shutdown()
        finally:
            _engine = None
            gc.collect()


def engine_id(model_path: str, cfg: EngineConfig) -> str:
    """What vLLM's answers depend on, for cache keys: the weights and the dtype they ran in."""
    return f"vllm[{cfg.dtype}]:{model_fingerprint(model_path)}"


class VLLMEngine:
    def __init__(self, model_path: str, cfg: EngineConfig):
        from vllm import LLM  # the optional engine: imported only when a stage uses it

        gpu = compute_device().type == "cuda"
        if not gpu:  # vLLM's CPU backend sizes its KV cache from this variable, not from the utilization
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{cfg.cpu_kv_cache_gib:g}"
        self.path, self.cfg = model_path, cfg
        self.tokenizer = load_tokenizer(model_path)
        self.stop_ids = _end_of_turn_ids(model_path, self.tokenizer)
        self.llm = LLM(model=model_path, tokenizer=model_path, dtype=cfg.dtype, seed=0, trust_remote_code=False,
                       tensor_parallel_size=cfg.tensor_parallel_size, max_model_len=cfg.max_model_len,
                       gpu_memory_utilization=cfg.memory_share(gpu), enforce_eager=cfg.eager(gpu),
                       enable_prefix_caching=True,
                       # vLLM 0.32's CPU backend crashes rewinding a seeded request's generator when chunked
                       # prefill splits its prompt ("CPU Generator does not use offset"): whole prefills there
                       enable_chunked_prefill=gpu)
        self.max_len = self.llm.llm_engine.model_config.max_model_len

    def generate(self, chats: list[list[dict]], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, on_prompt: Callable[[int, list[Generation] | Failure], None]) -> None:
        """``num_samples`` answers to each chat; ``on_prompt(index, generations or Failure)`` hears of
        each chat as its call returns. A prompt too long for the engine fails alone."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(n=num_samples, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, seed=seed if temperature > 0 else None,
                                stop_token_ids=self.stop_ids, skip_special_tokens=True)
        ids = [self.tokenizer(render_prompt(self.tokenizer, c), add_special_tokens=False)["input_ids"] for c in chats]
        fits = []
        for i, prompt in enumerate(ids):
            if len(prompt) >= self.max_len:
                on_prompt(i, Failure(f"prompt of {len(prompt)} tokens: the engine's max_model_len is {self.max_len}"))
            else:
                fits.append(i)
        for start in range(0, len(fits), self.cfg.chunk_prompts):
            chunk = fits[start : start + self.cfg.chunk_prompts]
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i in chunk], params, use_tqdm=False)
            for i, out in zip(chunk, outputs, strict=True):
                on_prompt(i, [Generation(o.text.strip(), len(o.token_ids)) for o in out.outputs])

    def shutdown(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()  # stops the engine's own process, and its memory with it
        del self.llm


class ServedEngine:
    """``data_parallel_size`` replicas behind vLLM's server on loopback, with ``VLLMEngine.generate``'s
    interface: a prompt's K samples are K requests seeded ``seed + k``."""

    def __init__(self, model_path: str, cfg: EngineConfig):
        from dpo_core.inference.backends import make_client
        from dpo_core.inference.config import ClientOptions
        from dpo_core.inference.serve import free_port, start_server

        self.path, self.cfg = model_path, cfg
        port = free_port()
        self.server = start_server(model_path, port, cfg, own_session=False, served_name="model")
        self.client = make_client(f"http://127.0.0.1:{port}/v1", "model",
                                  ClientOptions(concurrency=64 * cfg.data_parallel_size, timeout_s=600))

    def generate(self, chats: list[list[dict]], *, num_samples: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, on_prompt: Callable[[int, list[Generation] | Failure], None]) -> None:
        bodies = [{"messages": chat, "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                   "seed": seed + k} for chat in chats for k in range(num_samples)]
        answers: dict[int, list] = {i: [None] * num_samples for i in range(len(chats))}

        def done(j, reply):
            i, k = divmod(j, num_samples)
            if answers.get(i) is None:
                return  # a sample of this prompt failed already
            if isinstance(reply, Failure):
                answers[i] = None
                on_prompt(i, reply)
                return
            answers[i][k] = Generation(reply.text.strip(), reply.completion_tokens)
            if all(answers[i]):
                on_prompt(i, answers[i])

        self.client.run(bodies, done)

    def shutdown(self) -> None:
        from dpo_core.inference.serve import stop_server

        stop_server(self.server)


def _end_of_turn_ids(model_path: str, tokenizer) -> list[int]:
    """The generation config's end-of-sequence ids plus the tokenizer's, as the local backend stops."""
    try:
        config = GenerationConfig.from_pretrained(model_path)
    except OSError:  # a model folder without generation_config.json
        config = GenerationConfig()
    return eos_ids(config, tokenizer)
