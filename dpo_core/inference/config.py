"""How answers are sampled, how hard an OpenAI-compatible server is pushed, and the model specs
generators and judges are named by (checked when a config is built, before any work).

Free of torch, so configs load in Prefect's flow process and the UI's forms without a model stack.
"""

from __future__ import annotations

from pydantic import Field

from dpo_core.common.config import config_dataclass


@config_dataclass
class SamplingConfig:
    num_samples: int = Field(4, ge=1, le=64, description="Answers per prompt (K); UltraFeedback drew 4")
    max_new_tokens: int = Field(160, ge=1, le=32768, description="Longest answer, in tokens")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="0: greedy decoding (then num_samples must be 1); "
                                                                "0.8 gives K answers that differ enough to rank")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling: drops the unlikely tail that "
                                                           "temperature alone would keep")
    batch_size: int = Field(8, ge=1, description="Prompts per generate call; each holds num_samples sequences")
    seed: int = Field(0, ge=0, description="Sample k of a prompt uses seed + k: the same settings draw the same answers")

    def __post_init__(self):
        if self.temperature == 0 and self.num_samples != 1:
            raise ValueError("greedy decoding (temperature=0) gives identical samples: set num_samples=1")


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
    """Refuse a malformed ``local:<model ref>`` / ``openai:<base_url>|<model>`` spec (or, with ``bare``,
    a model reference alone) naming the ``role`` setting, so a typo fails when the config is built
    rather than after a stage has started."""
    kind, sep, rest = spec.partition(":")
    if kind == "openai":
        openai_endpoint(spec, role)
    elif kind == "local":
        if not rest.strip():
            raise ValueError(f"{role} {spec!r}: local: needs a model reference, e.g. local:./my-model")
    elif not bare:
        raise ValueError(f"{role} {spec!r}: use local:<model ref> or openai:<base_url>|<model>")
    elif sep and kind != "embedded" and not kind.startswith((".", "/", "~")):
        raise ValueError(f"{role} {spec!r}: unknown prefix {kind!r}: use local:<model ref>, openai:<base_url>|<model>, "
                         "embedded:<name> or a model folder or hub id")
    if not spec.strip():
        raise ValueError(f"{role}: empty model spec")
    return spec
