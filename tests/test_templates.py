"""The chat_template setting on a tiny base model whose tokenizer has no template and none of
ChatML's tokens: refused without it; with it, a model folder that renders the template, holds
the new special tokens in resized embeddings, and trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from torch.testing import assert_close
from transformers import AutoTokenizer

from dpo_core.common.chat import render_prompt
from dpo_core.common.io import write_jsonl
from dpo_core.common.models import load_model, load_tokenizer
from dpo_core.common.templates import apply_chat_template_setting, check_chat_template
from dpo_core.train.config import SFTConfig
from dpo_core.train.sft import train_sft

CHAT = [{"role": "user", "content": "the quick fox"}, {"role": "assistant", "content": "the lazy dog"}]


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path / "cache"))


def test_a_model_without_a_template_fails_fast_naming_the_setting(tiny_base_model):
    for check in (check_chat_template, lambda ref: apply_chat_template_setting(ref, None), load_tokenizer):
        with pytest.raises(ValueError, match="has no chat template .* set the chat_template setting to 'chatml'"):
            check(tiny_base_model)


def test_an_unset_setting_keeps_a_chat_model_as_it_is(tiny_model):
    assert apply_chat_template_setting(tiny_model, None) == tiny_model


def test_chatml_gives_a_base_model_its_tokens_resized_embeddings_and_end_of_turn(tiny_base_model):
    base_tok, base_model = AutoTokenizer.from_pretrained(tiny_base_model), load_model(tiny_base_model)
    assert "<|im_start|>" not in base_tok.get_vocab()
    folder = apply_chat_template_setting(tiny_base_model, "chatml")
    tok, model = load_tokenizer(folder), load_model(folder)

    assert tok.apply_chat_template(CHAT, tokenize=False) == (
        "<|im_start|>user\nthe quick fox<|im_end|>\n<|im_start|>assistant\nthe lazy dog<|im_end|>\n")
    assert render_prompt(tok, CHAT[:1]).endswith("<|im_start|>assistant\n")
    start, end = (tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert {start, end} == {len(base_tok), len(base_tok) + 1}  # new ids past the old vocabulary
    assert tok("<|im_start|>user", add_special_tokens=False)["input_ids"][0] == start  # one token, never split
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == end
    assert tok.pad_token == "</s>" and tok.pad_token_id != end  # the base's EOS pads: it ends no turn now

    rows = len(base_tok)
    for new, old in ((model.get_input_embeddings(), base_model.get_input_embeddings()),
                     (model.get_output_embeddings(), base_model.get_output_embeddings())):
        assert new.weight.shape[0] == len(tok) == rows + 2
        assert_close(new.weight[:rows], old.weight)  # the trained rows kept
    assert apply_chat_template_setting(tiny_base_model, "chatml") == folder  # cached, keyed by model and template
    assert apply_chat_template_setting(tiny_base_model, "zephyr") != folder


def test_sft_runs_on_the_prepared_base_model(tiny_base_model, tmp_path):
    folder = apply_chat_template_setting(tiny_base_model, "chatml")
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"id": f"c{i}", "messages": CHAT} for i in range(4)])
    cfg = SFTConfig(sources=["conversations"], lora=False, learning_rate=1e-2, epochs=3, batch_size=4,
                    warmup_ratio=0.0)
    result = train_sft(cfg, folder, tmp_path / "out", conversations_path=chats)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]
    tok = load_tokenizer(folder)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    before = load_file(Path(folder) / "model.safetensors")["lm_head.weight"]
    after = load_file(Path(result.model_path) / "model.safetensors")["lm_head.weight"]
    assert after.shape[0] == len(tok) and not after[end].equal(before[end])  # the new end-of-turn row learns
    assert load_tokenizer(result.model_path).chat_template == load_tokenizer(folder).chat_template


def test_zephyr_ends_turns_with_eos_and_adds_a_pad(tiny_base_model):
    tok = load_tokenizer(apply_chat_template_setting(tiny_base_model, "zephyr"))
    assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=False) == (
        "<|user|>\nthe quick fox</s>\n<|assistant|>\nthe lazy dog</s>\n")
    assert tok.eos_token == "</s>" and tok.pad_token == "<|pad|>"
    assert all(m in tok.all_special_tokens for m in ("<|system|>", "<|user|>", "<|assistant|>"))


def test_a_jinja_file_finds_its_own_end_of_turn(tiny_base_model, tmp_path):
    path = tmp_path / "llama3.jinja"
    path.write_text("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}"
                    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
                    "<|end_header_id|>\n\n{% endif %}")
    tok = load_tokenizer(apply_chat_template_setting(tiny_base_model, str(path)))
    assert tok.eos_token == "<|eot_id|>" and "<|start_header_id|>" in tok.all_special_tokens


@pytest.mark.parametrize(("setting", "problem"), [
    ("vicuna", "neither a named template .*chatml, zephyr"),
    ("plain", "holds no special token"),
])
def test_unusable_settings_are_refused(tiny_base_model, tmp_path, setting, problem):
    if setting == "plain":
        setting = str(tmp_path / "plain.jinja")
        Path(setting).write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                                 "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ValueError, match=problem):
        apply_chat_template_setting(tiny_base_model, setting)
