"""How answers are sampled, how hard an OpenAI-compatible server is pushed, and the model specs
generators and judges are named by (checked when a config is built, before any work).

Free of torch, so configs load in Prefect's flow process and the UI's forms without a model stack.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

from pydantic import Field

from dpo_core.common.config import config_dataclass

ENGINE_ENV = "DPO_PIPELINE_ENGINE"  # what engine "auto" means on this machine: local or vllm


@config_dataclass
class SamplingConfig:
    num_samples: int = Field(4, ge=1, le=64, description="Answers per prompt (K); UltraFeedback drew 4")
    max_new_tokens: int = Field(160, ge=1, le=32768, description="Longest answer, in tokens")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="0: greedy decoding (then num_samples must be 1); "
                                                                "0.8 gives K answers that differ enough to rank")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling: drops the unlikely tail that "
                                                           "temperature alone would keep")
    batch_size: int = Field(8, ge=1, description="Prompts per generate call; each holds num_samples sequences")
    seed: int = Field(0, ge=0, description="Sample k of a prompt draws from a random stream of its own: seeded by "
                                           "(seed, k, prompt) on transformers, seed + k on vLLM and servers. The same "
                                           "settings draw the same answers however prompts are batched, ordered or "
                                           "resumed")

    def __post_init__(self):
        if self.temperature == 0 and self.num_samples != 1:
            raise ValueError("greedy decoding (temperature=0) gives identical samples: set num_samples=1")


@config_dataclass
class EngineConfig:
    """What runs a stage's own models (the policy that samples candidates, the models evaluated, a
    bare model reference among the generators), and vLLM's settings. ``vllm:<model ref>`` and
    ``local:<model ref>`` specs name their engine whatever this says."""

    name: Literal["auto", "vllm", "local"] = Field(
        "auto", description=f"auto: ${ENGINE_ENV} if set, else vllm when it is installed, else local (transformers)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="vLLM's weights and activations (auto: its choice for the model and device)")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs one model is split across")
    data_parallel_size: int = Field(1, ge=1, description="vLLM: model replicas, each on its own GPUs. Above 1 the "
                                                         "model is served by vLLM's server on loopback (vLLM's "
                                                         "offline engine runs one replica per process)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="vLLM: share of GPU memory it reserves (none: 0.85). On a CPU it is the "
                                          "share of host memory, and none means 0.15")
    cpu_kv_cache_gib: float = Field(2.0, gt=0.0, description="vLLM on a CPU: GiB of host memory for the KV cache")
    max_model_len: int | None = Field(None, ge=16, description="vLLM: longest prompt plus answer (none: the "
                                                               "model's own)")
    enforce_eager: bool | None = Field(None, description="vLLM: skip compilation and CUDA graphs (none: eager on a "
                                                         "CPU, where compiling costs ~50 s at start-up for ~10% "
                                                         "more tokens/s, measured in BENCHMARKS.md)")
    chunk_prompts: int = Field(64, ge=1, description="vLLM: prompts per engine call; each call's answers are stored "
                                                     "before the next starts, so a killed run loses at most one call")

    def memory_share(self, gpu: bool) -> float:
        return self.gpu_memory_utilization or (0.85 if gpu else 0.15)

    def eager(self, gpu: bool) -> bool:
        return self.enforce_eager if self.enforce_eager is not None else not gpu

    def resolved(self) -> Literal["vllm", "local"]:
        """The engine ``auto`` stands for here."""
        if self.name != "auto":
            return self.name
        chosen = os.environ.get(ENGINE_ENV, "").strip()
        if chosen in ("vllm", "local"):
            return chosen
        if chosen:
            raise ValueError(f"{ENGINE_ENV}={chosen!r}: use vllm or local")
        return "vllm" if importlib.util.find_spec("vllm") else "local"


@config_dataclass
class ClientOptions:
    """How hard to push an OpenAI-compatible server."""

    api_key_env: str = Field("OPENAI_API_KEY", description="Variable holding the API key (unset: no key)")
    timeout_s: float = Field(60.0, gt=0.0, description="Per request")
    max_retries: int = Field(4, ge=0, le=20, description="Retries of a request that failed transiently")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at once")
    requests_per_s: float | None = Field(None, gt=0.0, description="Rate limit (none by default)")


def openai_endpoint(spec: str, role: str) -> tuple[str, str]:
    """(base_url, model) of the ``openai:<base_url>|<model>`` spec of a ``role`` (judge, generator)."""
    base_url, _, model = spec.removeprefix("openai:").partition("|")
    if not spec.startswith("openai:") or not base_url.strip() or not model.strip():
        raise ValueError(f"{role} {spec!r}: use openai:<base_url>|<model>, e.g. openai:http://127.0.0.1:8000/v1|my-model")
    return base_url, model


def check_model_spec(spec: str, role: str, bare: bool = True) -> str:
    """Refuse a malformed ``local:<model ref>`` / ``vllm:<model ref>`` / ``openai:<base_url>|<model>``
    spec (or, with ``bare``, a model reference alone) naming the ``role`` setting, so a typo fails
    when the config is built rather than after a stage has started."""
    kind, sep, rest = spec.partition(":")
    if kind == "openai":
        openai_endpoint(spec, role)
    elif kind in ("local", "vllm"):
        if not rest.strip():
            raise ValueError(f"{role} {spec!r}: {kind}: needs a model reference, e.g. {kind}:./my-model")
    elif not bare:
        raise ValueError(f"{role} {spec!r}: use local:<model ref>, vllm:<model ref> or openai:<base_url>|<model>")
    elif sep and kind != "embedded" and not kind.startswith((".", "/", "~")):
        raise ValueError(f"{role} {spec!r}: unknown prefix {kind!r}: use local:<model ref>, vllm:<model ref>, "
                         "openai:<base_url>|<model>, embedded:<name> or a model folder or hub id")
    if not spec.strip():
        raise ValueError(f"{role}: empty model spec")
    return spec
