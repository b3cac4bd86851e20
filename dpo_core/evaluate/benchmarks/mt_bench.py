"""MT-Bench-style single-answer grading: multi-turn questions, a judge explains then rates 1-10.

Questions come from JSONL in MT-Bench's format: ``{"question_id", "category", "turns": [...],
"reference": [...]}`` (``reference`` optional: reference answers per turn, used for math and
reasoning). Every turn is graded; ratings the judge does not give in a parseable form, after
``max_retries`` re-asks, are counted as parse failures and left out of the mean, never dropped
silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dpo_core.common.io import read_jsonl
from dpo_core.judges.asking import ask_all
from dpo_core.judges.parsing import parse_rating

PROMPT_VERSION = "mt-single-v1"  # logged with every grade; edits to this module re-key the evaluate stage

_SYSTEM = ("You are a strict, fair judge of AI assistant answers. Judge helpfulness, relevance, accuracy, "
           "depth and clarity. Explain your judgement in two or three sentences, then give a rating from 1 "
           "to 10 in exactly this format: [[rating]], for example [[6]].")


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: list[str]
    reference: list[str] | None = None

    def __post_init__(self):
        if not self.turns or not all(isinstance(t, str) and t.strip() for t in self.turns):
            raise ValueError(f"question {self.question_id}: 'turns' must be a non-empty list of strings")
        if self.reference is not None and len(self.reference) != len(self.turns):
            raise ValueError(f"question {self.question_id}: 'reference' needs one answer per turn")


@dataclass(frozen=True)
class Grade:
    model: str
    question_id: str
    turn: int
    answer: str
    rating: float | None  # None: no parseable rating after retries
    judge_text: str  # the judge's last answer: the one rated, or the last it would not rate


def load_questions(path: Path) -> list[Question]:
    questions = []
    for i, row in enumerate(read_jsonl(path)):
        try:
            questions.append(Question(str(row["question_id"]), row.get("category", ""), row["turns"],
                                      row.get("reference")))
        except KeyError as e:
            raise ValueError(f"{path} row {i}: missing field {e}; MT-Bench rows need question_id and turns") from e
    return questions


def answer(chat, questions: list[Question], max_new_tokens: int) -> list[list[str]]:
    """Each question's answers turn by turn, every turn seeing the conversation so far."""
    history = [[] for _ in questions]
    answers = [[] for _ in questions]
    for turn in range(max(len(q.turns) for q in questions)):
        live = [i for i, q in enumerate(questions) if turn < len(q.turns)]
        for i in live:
            history[i].append({"role": "user", "content": questions[i].turns[turn]})
        for i, text in zip(live, chat.complete([history[i] for i in live], max_new_tokens), strict=True):
            history[i].append({"role": "assistant", "content": text})
            answers[i].append(text)
    return answers


def judge_prompt(q: Question, answers: list[str], turn: int) -> list[dict]:
    """The judge sees the whole dialogue up to ``turn`` and grades the answer of that turn."""
    dialogue = "".join(f"### User:\n{q.turns[t]}\n\n### Assistant:\n{answers[t]}\n\n" for t in range(turn + 1))
    reference = f"### Reference answer to the last question:\n{q.reference[turn]}\n\n" if q.reference else ""
    task = (f"{reference}### Dialogue:\n{dialogue}Grade only the assistant's last answer"
            + (", comparing it with the reference answer." if q.reference else "."))
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": task}]


def grade(judge, model_label: str, questions: list[Question], answers: list[list[str]],
          max_retries: int = 2, max_new_tokens: int = 256) -> list[Grade]:
    """Grade every turn; a judgement without a readable rating is asked again, up to ``max_retries``
    times, with the judge's answer and what is wrong with it (dpo_core.judges.asking)."""
    items = [(q, a, t) for q, a in zip(questions, answers, strict=True) for t in range(len(a))]
    results = ask_all(judge, [judge_prompt(*item) for item in items], parse_rating, max_retries, max_new_tokens)
    return [Grade(model_label, q.question_id, t, a[t], rating, texts[-1])
            for (q, a, t), (rating, texts) in zip(items, results, strict=True)]


def summarize(grades: list[Grade]) -> dict[str, float]:
    """Mean rating (absent when nothing was rated) and the parse-failure count and rate; the caller
    names the family (``mt_bench_`` for the question file, ``judge/`` for the held-out answers)."""
    rated = [g.rating for g in grades if g.rating is not None]
    failures = {"parse_failures": float(len(grades) - len(rated)),
                "parse_failure_rate": (len(grades) - len(rated)) / max(len(grades), 1)}
    return failures | ({"rating": sum(rated) / len(rated)} if rated else {})

