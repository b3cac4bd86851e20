"""The feedback stage's config: generators, sampling, the judge and the pairing rule.

Free of torch, so it loads in Prefect's flow process and the UI's forms without a model stack.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dpo_core.common.config import config_dataclass
from dpo_core.inference.config import ClientOptions, EngineConfig, SamplingConfig, check_model_spec
from dpo_core.judges.rubric import ULTRAFEEDBACK_ASPECTS, Aspect

JUDGE_KINDS = ("verifiable", "rubric", "pairwise", "reward")


@config_dataclass
class FeedbackConfig:
    max_prompts: int | None = Field(None, ge=1, description="Use at most this many training prompts")
    generators: list[str] = Field(default_factory=list, description="More candidate sources beside the stage's "
                                                                     "model: local:<model ref>, vllm:<model ref>, "
                                                                     "openai:<base_url>|<model> or a model ref (on engine)")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="What runs the stage's model, bare "
                                                                           "generator refs and vllm: judges")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="K samples per generator and prompt")
    judge: str = Field("verifiable", description="verifiable, rubric:<backend>, pairwise:<backend> or reward:<model ref>")
    rubric_aspects: list[Aspect] = Field(default_factory=lambda: list(ULTRAFEEDBACK_ASPECTS), min_length=1,
                                         description="Rubric judge: aspects rated 1-5, one judge call each")
    judge_max_retries: int = Field(2, ge=0, le=10, description="Re-asks of an unparseable judge answer before the "
                                                               "item is set aside")
    judge_max_new_tokens: int = Field(512, ge=8, description="Longest judge answer; 512 fits 4 rationales and ratings")
    client: ClientOptions = Field(default_factory=ClientOptions, description="OpenAI-compatible endpoints: "
                                                                               "generators and judges")
    binarize: Literal["best_vs_random", "best_vs_worst", "all_pairs"] = Field(
        "best_vs_random", description="Pairing rule (dpo_core.feedback.binarize): Zephyr's best vs a random lower "
                                      "one by default")
    min_margin: float = Field(0.0, ge=0.0, le=1.0, description="A pair's scores must differ by at least this much")
    length_tolerance: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Length watch: the chosen answer is the shortest scoring within this of the best (0: off; 0.1 on the "
        "verifiable judge's 0-1 scale prefers a shorter answer that misses at most a tenth of the instructions); "
        "iterated DPO otherwise learns that longer answers win"))
    cache_path: str | None = Field(None, description="The item cache (default: feedback-items.sqlite beside the output)")

    def __post_init__(self):
        kind, _, rest = self.judge.partition(":")
        if kind not in JUDGE_KINDS or (kind == "verifiable") != (rest == ""):
            raise ValueError(f"judge {self.judge!r}: use verifiable, rubric:<backend>, pairwise:<backend> "
                             "or reward:<model ref>")
        if kind in ("rubric", "pairwise"):
            check_model_spec(rest, f"judge {kind}:", bare=False)
        if kind == "reward":
            check_model_spec(rest, "judge reward:")
        for spec in self.generators:
            check_model_spec(spec, "generators")
        if self.length_tolerance and self.binarize == "all_pairs":
            raise ValueError(f"length_tolerance={self.length_tolerance} picks one chosen answer per prompt, and "
                             "binarize=all_pairs pairs every two: use best_vs_random or best_vs_worst, or set "
                             "length_tolerance=0")
