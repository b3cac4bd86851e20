"""A reward-model judge: any sequence-classification model that scores a (prompt, answer) chat
with one logit (e.g. a Skywork or ArmoRM-style reward model, or one trained here).

The candidate's score is the sigmoid of the reward, a monotone map into [0, 1] that keeps the
ranking (the Bradley-Terry probability of beating a zero-reward answer); the raw reward is kept
beside it. Chats are rendered with the reward model's own chat template. The model runs where
``load_model`` places it, in bf16 on a GPU that has it (rewards are read in float32).
"""

from __future__ import annotations

import math

import torch
from transformers import AutoModelForSequenceClassification

from dpo_core.common.models import load_model, load_tokenizer, resolve_model
from dpo_core.inference.backends import local_model_id
from dpo_core.judges.verdicts import Verdict


class RewardModelJudge:
    def __init__(self, model_ref: str, batch_size: int = 8, max_length: int = 1024, trust_remote_code: bool = False):
        path = resolve_model(model_ref)
        self.tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.model = load_model(path, trust_remote_code=trust_remote_code, inference=True,
                                auto_class=AutoModelForSequenceClassification).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {model_ref}: expected one output logit, found {self.model.config.num_labels}")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length
        self.name, self.version = f"reward:{model_ref}", "reward-v1"
        self.cache_id = f"reward:{local_model_id(path)}"

    @torch.inference_mode()
    def rewards(self, chats: list[list[dict]]) -> list[float]:
        out = []
        self.tokenizer.padding_side = "right"
        for s in range(0, len(chats), self.batch_size):
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in chats[s : s + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                                 add_special_tokens=False).to(self.model.device)
            out += self.model(**enc).logits[:, 0].float().tolist()
        return out

    def judge(self, items, on_done) -> None:
        for i, (prompt, texts) in enumerate(items):
            rewards = self.rewards([prompt.messages + [{"role": "assistant", "content": t}] for t in texts])
            on_done(i, Verdict([1 / (1 + math.exp(-r)) for r in rewards], [{"reward": r} for r in rewards]))
