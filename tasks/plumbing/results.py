"""The small typed values tasks hand each other: paths, digests, run ids, model URIs, metrics."""

from __future__ import annotations

from pydantic import BaseModel


class DatasetRef(BaseModel):
    train_path: str  # prompts to sample answers for (may be empty when a team brings only chats or pairs)
    eval_path: str  # held-out prompts
    digest: str
    run_id: str
    counts: dict[str, int]
    sft_path: str | None = None  # the team's conversations (SFTRecord per line)
    pairs_path: str | None = None  # the team's preference pairs (PreferencePair per line)
    transfer_path: str | None = None  # held-out prompts phrased unlike training's: does a gain transfer?


class FeedbackRef(BaseModel):
    candidates_path: str
    pairs_path: str
    digest: str
    run_id: str
    stats: dict[str, float]


class ModelRef(BaseModel):
    model_path: str  # merged safetensors checkpoint
    digest: str
    run_id: str
    model_uri: str  # the MLflow logged model (models:/m-...)
    eval_pairs_path: str | None = None  # DPO: the preference pairs it held out


class EvalReport(BaseModel):
    run_id: str
    samples_path: str
    scores: dict[str, dict[str, float]]
    head_to_head: list[dict]
    transfer_samples_path: str | None = None  # the same models' answers to the transfer prompts


class PromotionDecision(BaseModel):
    registered_model: str
    version: str  # the challenger's model version
    baseline: str  # "champion" or, before there is one, "base"
    promoted: bool
    reasons: list[str]
