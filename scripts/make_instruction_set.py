"""Generate dpo_core/data/instructions/instructions.jsonl, the shipped IFEval-style prompt set.

Run from the repository root:

    python -m scripts.make_instruction_set [--out PATH]

It is deterministic (``random.Random(0)``), so a rerun reproduces the committed
file byte for byte. Each row is a base task (task template x topic) followed by
1-3 compatible verifiable-instruction sentences. The eval split uses its own
task templates *and* its own topics, so no base task is shared with train.
Lengths and counts stay small because the answering model is tiny
(SmolLM2-135M-Instruct, ~160 new tokens).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dpo_core.data.instructions import CHECKERS, INSTRUCTION_SET_PATH, validate_instruction

SPLIT_SIZES = {"train": 340, "eval": 80}
MIN_KIND_COUNT = 5  # every kind appears at least this often in each split
COUNT_SHARES = (0.4, 0.4, 0.2)  # share of rows with 1, 2 and 3 instructions

TRAIN_TASKS = (
    "Write a short poem about {topic}.",
    "Write a brief email to a friend about {topic}.",
    "Write a short story that involves {topic}.",
    "Explain {topic} to a ten-year-old.",
    "Write a product description for a board game inspired by {topic}.",
    "Write a tweet about {topic}.",
    "Summarize why people care about {topic}.",
    "Give advice to a beginner who wants to learn about {topic}.",
    "Write a short speech for a school assembly about {topic}.",
    "Describe {topic} to someone who knows nothing about the subject.",
    "Write a diary entry about a day spent thinking about {topic}.",
    "Write the introduction of a blog post about {topic}.",
    "Write a short toast for a celebration themed around {topic}.",
    "Write a riddle whose answer is connected to {topic}.",
    "Write a short letter to a newspaper editor about {topic}.",
    "Suggest a family weekend activity related to {topic}.",
    "Write a motivational message inspired by {topic}.",
    "Write a short dialogue between two friends discussing {topic}.",
    "Write a song chorus about {topic}.",
    "Write an advertisement for a museum exhibit about {topic}.",
    "Describe a perfect afternoon centered on {topic}.",
    "Write a packing list for a trip focused on {topic}.",
    "Share some fun facts about {topic}.",
    "Write a short review of a documentary about {topic}.",
    "Write a thank-you note to a teacher who taught you about {topic}.",
    "Write a job posting for a volunteer who helps with a project about {topic}.",
    "Write the opening of a mystery novel that features {topic}.",
    "Write a short guide for visitors who want to learn about {topic}.",
    "Write a bedtime story about {topic}.",
    "Write a social media caption for a photo of {topic}.",
    "Write a short encyclopedia entry about {topic}.",
    "Write an invitation to a community event about {topic}.",
)

EVAL_TASKS = (
    "Write a short fable with a lesson about {topic}.",
    "Write a postcard message from a traveler who just learned about {topic}.",
    "Write a brief news report about a local event related to {topic}.",
    "Write a short persuasive paragraph about the importance of {topic}.",
    "Write a children's rhyme about {topic}.",
    "Write a short interview question and its answer about {topic}.",
    "Write a podcast episode description about {topic}.",
    "Write a short reflection on what {topic} can teach us.",
)

# topic -> related keywords, used for include/forbid/frequency instructions.
TRAIN_TOPICS = {
    "the moon": ("light", "night", "tides", "craters"),
    "honeybees": ("hive", "pollen", "queen", "honey"),
    "recycling": ("plastic", "bins", "reuse", "waste"),
    "public libraries": ("books", "quiet", "borrow", "librarian"),
    "volcanoes": ("lava", "ash", "eruption", "magma"),
    "the water cycle": ("rain", "clouds", "evaporation", "vapor"),
    "coffee": ("beans", "morning", "roast", "aroma"),
    "rainy days": ("puddles", "umbrella", "thunder", "cozy"),
    "chess": ("knight", "board", "strategy", "checkmate"),
    "bicycles": ("pedals", "wheels", "helmet", "ride"),
    "the ocean": ("waves", "salt", "shore", "tide"),
    "friendship": ("trust", "laughter", "loyal", "share"),
    "gardening": ("soil", "seeds", "water", "bloom"),
    "trains": ("tracks", "station", "whistle", "journey"),
    "the night sky": ("stars", "constellations", "dark", "telescope"),
    "old maps": ("compass", "ink", "explorers", "borders"),
    "penguins": ("ice", "waddle", "colony", "fish"),
    "baking bread": ("dough", "yeast", "oven", "crust"),
    "mountains": ("peak", "climb", "snow", "trail"),
    "kindness": ("smile", "help", "gentle", "gift"),
    "the internet": ("network", "data", "online", "connect"),
    "solar power": ("panels", "sunlight", "energy", "clean"),
    "rivers": ("current", "banks", "flow", "delta"),
    "music lessons": ("practice", "piano", "rhythm", "teacher"),
    "dinosaurs": ("fossils", "extinct", "giant", "bones"),
    "winter": ("frost", "scarf", "cold", "fireplace"),
    "lighthouses": ("beam", "keeper", "rocks", "ships"),
    "robots": ("sensors", "circuits", "program", "machine"),
    "rainforests": ("canopy", "parrots", "humid", "vines"),
    "hot air balloons": ("basket", "flame", "float", "sky"),
    "origami": ("paper", "fold", "crane", "crease"),
    "camping": ("tent", "campfire", "marshmallows", "forest"),
    "the human heart": ("pulse", "blood", "beat", "muscle"),
    "snowflakes": ("crystal", "unique", "frozen", "delicate"),
    "street food": ("vendor", "spicy", "noodles", "cheap"),
    "bridges": ("steel", "span", "river", "cable"),
    "clocks": ("hands", "tick", "gears", "time"),
    "deserts": ("sand", "dunes", "cactus", "heat"),
    "owls": ("feathers", "hoot", "wise", "nocturnal"),
    "jazz": ("saxophone", "improvise", "swing", "band"),
    "soccer": ("goal", "team", "kick", "referee"),
    "lemons": ("sour", "juice", "yellow", "zest"),
    "fireflies": ("glow", "summer", "meadow", "blink"),
    "city parks": ("bench", "trees", "picnic", "pond"),
    "handwritten letters": ("envelope", "stamp", "pen", "postman"),
    "astronauts": ("rocket", "orbit", "gravity", "spacesuit"),
    "farmers markets": ("vegetables", "stalls", "local", "fresh"),
    "board games": ("dice", "rules", "players", "turn"),
}

EVAL_TOPICS = {
    "coral reefs": ("fish", "colorful", "reef", "diver"),
    "windmills": ("blades", "wind", "grain", "turning"),
    "glaciers": ("ice", "melt", "slow", "valley"),
    "kites": ("string", "breeze", "tail", "soar"),
    "submarines": ("periscope", "depth", "sonar", "hatch"),
    "mushrooms": ("fungi", "spores", "damp", "forage"),
    "sign language": ("hands", "gestures", "deaf", "signs"),
    "thunderstorms": ("lightning", "rain", "thunder", "clouds"),
    "pottery": ("clay", "wheel", "kiln", "glaze"),
    "the northern lights": ("aurora", "green", "arctic", "glow"),
    "whales": ("song", "migrate", "giant", "blowhole"),
    "marathons": ("runners", "miles", "finish", "training"),
}

START_PHRASES = ("Here is", "In short", "To begin", "My answer", "Good question", "Let me share")
END_PHRASES = (
    "Is there anything else I can help with?",
    "That is all.",
    "Thank you for reading.",
    "Stay curious.",
)
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S.")
FREQUENCY_LETTERS = "bcdfghklmpuwy"

# Natural-language sentences per kind; fields are the instruction's args, with
# list args pre-rendered as 'the word "x"' / 'the words "x" and "y"'.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "lowercase": (
        "Your entire answer must be in lowercase letters; no capitals are allowed.",
        "Write everything in lowercase, without a single capital letter.",
        "Do not use any capital letters anywhere in your response.",
    ),
    "uppercase": (
        "Your entire response must be written in capital letters.",
        "Write your whole answer in all caps.",
        "Use only uppercase letters in your answer.",
    ),
    "max_words": (
        "Use no more than {n} words.",
        "Your response must not exceed {n} words.",
        "Keep your answer to at most {n} words.",
    ),
    "min_words": (
        "Your answer must be at least {n} words long.",
        "Write no fewer than {n} words.",
        "Use {n} words or more.",
    ),
    "max_sentences": (
        "Use no more than {n} sentences.",
        "Your response should contain at most {n} sentences.",
        "Keep it to {n} sentences or fewer.",
    ),
    "exact_paragraphs": (
        "Your response must have exactly {n} paragraphs, separated by blank lines.",
        "Write exactly {n} paragraphs and separate them with the markdown divider ***.",
        "Split your answer into {n} paragraphs separated by empty lines.",
    ),
    "bullet_count": (
        'Your answer must contain exactly {n} markdown bullet points such as "* This is a point".',
        'Format your response as exactly {n} bullet points, each starting with "- ".',
        "Include exactly {n} bullet points that start with an asterisk and a space.",
    ),
    "include_keywords": (
        "Include {keywords} in your response.",
        "Make sure to use {keywords}.",
        "Your answer must mention {keywords}.",
    ),
    "forbidden_words": (
        "Do not include {words} in your response.",
        "Avoid using {words}.",
        "Your answer must not contain {words}.",
    ),
    "keyword_frequency": (
        'The word "{word}" should appear at least {n} times.',
        'Use the word "{word}" at least {n} times in your answer.',
        'Mention "{word}" {n} or more times.',
    ),
    "letter_frequency": (
        'The letter "{letter}" should appear at least {n} times in your response.',
        'Use the letter "{letter}" at least {n} times.',
    ),
    "start_with": (
        'Begin your response with the words "{phrase}".',
        'Start your answer with "{phrase}".',
        'Your reply must open with the phrase "{phrase}".',
    ),
    "end_with": (
        'Finish your response with the exact phrase "{phrase}" and nothing after it.',
        'End your answer with "{phrase}" and do not write anything after that.',
    ),
    "json_format": (
        "Wrap your entire output in JSON format.",
        "Your whole answer must be valid JSON; you may put it in a ```json code block.",
        "Format the entire response as a JSON object.",
    ),
    "title": (
        "Include a title wrapped in double angular brackets, such as <<my title>>.",
        "Give your answer a title and put it inside double angle brackets, like <<title>>.",
    ),
    "no_commas": (
        "Do not use any commas in your response.",
        "Your entire answer must be free of commas.",
        "Avoid commas completely.",
    ),
    "quotation": (
        "Wrap your entire response in double quotation marks.",
        "Put your whole answer inside double quotes.",
    ),
    "postscript": (
        'At the end of your response, add a postscript starting with "{marker}".',
        'Please add a postscript that begins with "{marker}".',
    ),
    "highlighted_sections": (
        "Highlight at least {n} sections of your answer with markdown, for example *highlighted section*.",
        "Use markdown to highlight at least {n} parts of your response, like *this part*.",
        "Mark at least {n} phrases as *highlighted* using single asterisks.",
    ),
    "placeholders": (
        "Include at least {n} placeholders in square brackets, such as [address].",
        "Your response must contain at least {n} placeholders represented by square brackets, like [name].",
    ),
    "numbered_list": (
        "Present your answer as a numbered list with exactly {n} items (1., 2., and so on).",
        'Write exactly {n} numbered items, starting with "1.".',
        "Give exactly {n} points in a numbered list.",
    ),
    "capital_word_frequency": (
        "Use words in all capital letters at most {n} times.",
        "Include no more than {n} words written entirely in capital letters.",
        "Do not use more than {n} all-caps words.",
    ),
    "repeat_prompt": (
        'First repeat the request "{text}" word for word without change, then give your answer.',
        'Before you answer, copy this request exactly: "{text}" Then write your response.',
    ),
    "two_responses": (
        "Give two different responses, separated by six asterisk symbols: ******.",
        "Write two different answers and separate them with ******.",
        "Provide two alternative responses separated by exactly six asterisks (******).",
    ),
    "sections": (
        "Your response must have {n} sections. "
        "Mark the beginning of each section with SECTION X, such as: SECTION 1.",
        "Divide your answer into {n} sections, labeling them SECTION 1, SECTION 2, and so on.",
    ),
}

# Kinds that each impose the overall layout; a row has at most one of them.
STRUCTURE_KINDS = frozenset(
    {"exact_paragraphs", "bullet_count", "numbered_list", "sections", "two_responses", "json_format"}
)
# JSON output can only sensibly be combined with content constraints.
JSON_COMPATIBLE = frozenset(
    {
        "lowercase",
        "include_keywords",
        "forbidden_words",
        "keyword_frequency",
        "letter_frequency",
        "min_words",
        "max_words",
    }
)
CONFLICTS = frozenset(
    frozenset(pair)
    for pair in (
        ("lowercase", "uppercase"),
        ("lowercase", "sections"),
        ("lowercase", "repeat_prompt"),
        ("uppercase", "capital_word_frequency"),
        ("uppercase", "repeat_prompt"),
        ("max_words", "min_words"),
        ("max_words", "repeat_prompt"),
        ("capital_word_frequency", "sections"),
        ("quotation", "start_with"),
        ("quotation", "end_with"),
        ("quotation", "repeat_prompt"),
        ("quotation", "bullet_count"),
        ("quotation", "numbered_list"),
        ("quotation", "two_responses"),
        ("start_with", "repeat_prompt"),
        ("end_with", "postscript"),
        ("two_responses", "repeat_prompt"),
        *(("max_sentences", kind) for kind in STRUCTURE_KINDS),
    )
)


def compatible(a: str, b: str) -> bool:
    """Whether one response can reasonably satisfy both kinds."""
    if a == b or (a in STRUCTURE_KINDS and b in STRUCTURE_KINDS):
        return False
    if "json_format" in (a, b):
        return (b if a == "json_format" else a) in JSON_COMPATIBLE
    return frozenset((a, b)) not in CONFLICTS


@dataclass(frozen=True)
class _Context:
    """What an arg maker may draw from: the base task and still-unused topic keywords."""

    task: str
    free_keywords: tuple[str, ...]


def _keywords(rng: random.Random, ctx: _Context, key: str) -> dict | None:
    k = rng.randint(1, 2)
    if len(ctx.free_keywords) < k:
        return None
    return {key: rng.sample(ctx.free_keywords, k)}


def _count(lo: int, hi: int) -> Callable[[random.Random, _Context], dict]:
    return lambda rng, ctx: {"n": rng.randint(lo, hi)}


def _no_args(rng: random.Random, ctx: _Context) -> dict:
    return {}


ARG_MAKERS: dict[str, Callable[[random.Random, _Context], dict | None]] = {
    "lowercase": _no_args,
    "uppercase": _no_args,
    "max_words": lambda rng, ctx: {"n": rng.choice((25, 30, 40, 50, 60, 80))},
    "min_words": lambda rng, ctx: {"n": rng.choice((20, 25, 30, 40, 50, 60))},
    "max_sentences": _count(2, 5),
    "exact_paragraphs": _count(2, 3),
    "bullet_count": _count(2, 5),
    "include_keywords": lambda rng, ctx: _keywords(rng, ctx, "keywords"),
    "forbidden_words": lambda rng, ctx: _keywords(rng, ctx, "words"),
    "keyword_frequency": lambda rng, ctx: (
        {"word": rng.choice(ctx.free_keywords), "n": rng.randint(2, 4)} if ctx.free_keywords else None
    ),
    "letter_frequency": lambda rng, ctx: {"letter": rng.choice(FREQUENCY_LETTERS), "n": rng.randint(3, 6)},
    "start_with": lambda rng, ctx: {"phrase": rng.choice(START_PHRASES)},
    "end_with": lambda rng, ctx: {"phrase": rng.choice(END_PHRASES)},
    "json_format": _no_args,
    "title": _no_args,
    "no_commas": _no_args,
    "quotation": _no_args,
    "postscript": lambda rng, ctx: {"marker": rng.choice(POSTSCRIPT_MARKERS)},
    "highlighted_sections": _count(2, 3),
    "placeholders": _count(2, 3),
    "numbered_list": _count(3, 5),
    "capital_word_frequency": _count(2, 4),
    "repeat_prompt": lambda rng, ctx: {"text": ctx.task},
    "two_responses": _no_args,
    "sections": _count(2, 3),
}

_KEYWORD_ARGS = ("keywords", "words", "word")


def _used_keywords(instructions: list[dict]) -> set[str]:
    used: set[str] = set()
    for instr in instructions:
        for key in _KEYWORD_ARGS:
            value = instr["args"].get(key)
            used.update([value] if isinstance(value, str) else value or [])
    return used


def _consistent(instructions: list[dict]) -> bool:
    """Text the response must contain may not break another instruction (commas, forbidden words)."""
    by_kind = {i["kind"]: i["args"] for i in instructions}
    required = [*by_kind.get("include_keywords", {}).get("keywords", [])]
    for kind, key in (
        ("keyword_frequency", "word"),
        ("start_with", "phrase"),
        ("end_with", "phrase"),
        ("repeat_prompt", "text"),
        ("postscript", "marker"),
    ):
        if kind in by_kind:
            required.append(by_kind[kind][key])
    if "no_commas" in by_kind and any("," in text for text in required):
        return False
    forbidden = by_kind.get("forbidden_words", {}).get("words", [])
    return not any(re.search(rf"\b{re.escape(w)}\b", t, re.IGNORECASE) for w in forbidden for t in required)


def _pick_instructions(
    rng: random.Random, count: int, usage: Counter[str], task: str, keywords: tuple[str, ...]
) -> list[dict]:
    """Up to `count` mutually compatible instructions, least-used kinds first so every kind is covered."""
    chosen: list[dict] = []
    while len(chosen) < count:
        kinds = [c["kind"] for c in chosen]
        candidates = [k for k in sorted(CHECKERS) if all(compatible(k, c) for c in kinds)]
        rng.shuffle(candidates)
        candidates.sort(key=lambda k: usage[k])  # stable: random tie-break among equally used kinds
        used = _used_keywords(chosen)
        ctx = _Context(task=task, free_keywords=tuple(k for k in keywords if k not in used))
        for kind in candidates:
            args = ARG_MAKERS[kind](rng, ctx)
            if args is not None and _consistent([*chosen, {"kind": kind, "args": args}]):
                chosen.append({"kind": kind, "args": args})
                usage[kind] += 1
                break
        else:
            break
    return chosen


def _quoted_list(items: list[str], noun: str) -> str:
    quoted = [f'"{item}"' for item in items]
    if len(quoted) == 1:
        return f"the {noun} {quoted[0]}"
    return f"the {noun}s {', '.join(quoted[:-1])} and {quoted[-1]}"


def _sentence(rng: random.Random, instr: dict) -> str:
    fields = dict(instr["args"])
    if "keywords" in fields:
        fields["keywords"] = _quoted_list(fields["keywords"], "keyword")
    if "words" in fields:
        fields["words"] = _quoted_list(fields["words"], "word")
    return rng.choice(PHRASINGS[instr["kind"]]).format(**fields)


def _split_rows(
    rng: random.Random, split: str, tasks: tuple[str, ...], topics: dict[str, tuple[str, ...]]
) -> list[dict]:
    size = SPLIT_SIZES[split]
    pairs = [(task, topic) for task in tasks for topic in topics]
    n_one, n_two = round(size * COUNT_SHARES[0]), round(size * COUNT_SHARES[1])
    counts = [1] * n_one + [2] * n_two + [3] * (size - n_one - n_two)
    rng.shuffle(counts)
    usage: Counter[str] = Counter()
    rows = []
    for (template, topic), count in zip(rng.sample(pairs, size), counts, strict=True):
        task = template.format(topic=topic)
        instructions = _pick_instructions(rng, count, usage, task, topics[topic])
        prompt = " ".join([task, *(_sentence(rng, i) for i in instructions)])
        rows.append({"prompt": prompt, "instructions": instructions, "split": split})
    return rows


def _check(rows: list[dict]) -> None:
    """Fail loudly if the generated set breaks a guarantee the pipeline relies on."""
    for row in rows:
        for instr in row["instructions"]:
            validate_instruction(instr)
    for split, size in SPLIT_SIZES.items():
        split_rows = [r for r in rows if r["split"] == split]
        if len(split_rows) != size:
            raise RuntimeError(f"{split}: {len(split_rows)} rows, expected {size}")
        usage = Counter(i["kind"] for r in split_rows for i in r["instructions"])
        rare = sorted(k for k in CHECKERS if usage[k] < MIN_KIND_COUNT)
        if rare:
            raise RuntimeError(f"{split}: kinds used fewer than {MIN_KIND_COUNT} times: {rare}")
    prompts = {split: {r["prompt"] for r in rows if r["split"] == split} for split in SPLIT_SIZES}
    if prompts["train"] & prompts["eval"]:
        raise RuntimeError("a prompt is shared between train and eval")


def build_rows() -> list[dict]:
    """All rows, train then eval, with ids ifx-0001...; deterministic."""
    if set(PHRASINGS) != set(CHECKERS) or set(ARG_MAKERS) != set(CHECKERS):
        raise RuntimeError("PHRASINGS and ARG_MAKERS must cover exactly the registered checker kinds")
    rng = random.Random(0)
    rows = [
        *_split_rows(rng, "train", TRAIN_TASKS, TRAIN_TOPICS),
        *_split_rows(rng, "eval", EVAL_TASKS, EVAL_TOPICS),
    ]
    rows = [{"id": f"ifx-{i:04d}", **row} for i, row in enumerate(rows, start=1)]
    _check(rows)
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=INSTRUCTION_SET_PATH, help="output JSONL path")
    args = parser.parse_args(argv)
    rows = build_rows()
    write_rows(rows, args.out)
    sizes = Counter(r["split"] for r in rows)
    print(f"wrote {len(rows)} rows ({sizes['train']} train, {sizes['eval']} eval) to {args.out}")


if __name__ == "__main__":
    main()
