"""Give a base model a chat template: the ``chat_template`` setting.

Every stage renders chats with the model's own template, so a base model (none in its tokenizer)
needs one before it can be fine-tuned. ``apply_chat_template_setting`` writes, once, a model
folder in the cache holding the model and its tokenizer with the template set:

  * ``chat_template``: a name (``chatml``: ``<|im_start|>role ... <|im_end|>``, as Qwen and
    SmolLM use; ``zephyr``: ``<|user|> ... </s>``, as Zephyr uses) or the path to a Jinja file;
  * every ``<|...|>`` marker the template writes becomes a special token, added to the tokenizer
    when missing, and the embeddings grow to hold them (new rows drawn from the old rows' mean and
    covariance, transformers' ``mean_resizing``, so they start at the scale of a real token);
  * the end-of-turn token (the first special token after an assistant turn's content) becomes
    EOS, so generation stops where a turn ends; pad becomes a token distinct from it (the old
    pad or EOS, else a new ``<|pad|>``).

The folder is keyed by the model's fingerprint and the template's digest and written atomically,
as ``models.ensure_embedded_default`` writes its conversion; torch loads only when one is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dpo_core.common.chat import render_answer
from dpo_core.common.digest import digest_json
from dpo_core.common.models import (
    cache_dir,
    load_model,
    load_tokenizer,
    model_fingerprint,
    resolve_model,
    save_model_folder,
    set_turn_tokens,
)

CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
ZEPHYR = (  # each role's marker spelt out: the markers a template writes literally are the ones added
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- '<|system|>\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '<|user|>\\n' -}}"
    "{%- else -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
    "{{- message['content'] + eos_token + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)
NAMED_TEMPLATES = {"chatml": CHATML, "zephyr": ZEPHYR}
_MARKER = re.compile(r"<\|[A-Za-z0-9_.-]+\|>")  # the <|...|> tokens a template writes
_PAD = "<|pad|>"
_PROBE = [{"role": "user", "content": "Say yes."}]
_PROBE_ANSWER = "Yes."


@dataclass
class PreparedModel:
    model_path: str  # the model reference every stage uses: the model itself, or the folder with the template


def template_text(chat_template: str) -> str:
    """The Jinja source a ``chat_template`` setting names."""
    if chat_template in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[chat_template]
    path = Path(chat_template).expanduser()
    if path.is_file():
        return path.read_text()
    raise ValueError(f"chat_template={chat_template!r} is neither a named template ({', '.join(NAMED_TEMPLATES)}) "
                     "nor a Jinja file")


def check_chat_template(model_ref: str) -> None:
    """Fail fast, before any stage runs, when ``model_ref`` has no chat template: the error names
    the chat_template setting."""
    load_tokenizer(resolve_model(model_ref))


def apply_chat_template_setting(model_ref: str, chat_template: str | None) -> str:
    """The model reference the stages should use: ``model_ref`` itself (checked to have a
    template) when ``chat_template`` is unset, else a local folder holding the model with that
    template, its special tokens and resized embeddings (built on first use)."""
    if chat_template is None:
        check_chat_template(model_ref)
        return model_ref
    template = template_text(chat_template)
    path = resolve_model(model_ref)
    dest = cache_dir() / "models" / f"chat-template-{digest_json(['chat-template-v1', model_fingerprint(path), template])}"
    if (dest / "config.json").exists():
        return str(dest)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    vocab = tokenizer.get_vocab()
    _add_special(tokenizer, sorted({m for m in _MARKER.findall(template) if m not in vocab}))
    tokenizer.chat_template = template
    end_of_turn = _end_of_turn(tokenizer, chat_template)
    pad = next((t for t in (tokenizer.pad_token, tokenizer.eos_token) if t not in (None, end_of_turn)), _PAD)
    if pad not in vocab:
        _add_special(tokenizer, [pad])

    model = load_model(path, dtype="auto", device="cpu")  # converted and saved, never run
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # never shrink a vocabulary padded for speed
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    set_turn_tokens(tokenizer, model, end_of_turn, pad)
    return str(save_model_folder(model, tokenizer, dest))


def _add_special(tokenizer, tokens: list[str]) -> None:
    """Add ``tokens`` as special tokens: never split, and listed in ``all_special_ids``."""
    tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)


def _end_of_turn(tokenizer, chat_template: str) -> str:
    """The first special token the template writes after an assistant turn's content."""
    after = render_answer(tokenizer, _PROBE, _PROBE_ANSWER).split(_PROBE_ANSWER, 1)[1]
    special = set(tokenizer.all_special_ids)
    ids = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special]
    if not ids:
        raise ValueError(f"chat_template={chat_template!r} ends an assistant turn with {after!r}, which holds no "
                         "special token: a model could not learn where to stop; end turns with a <|...|> marker "
                         "or eos_token")
    return tokenizer.convert_ids_to_tokens(ids[0])
