"""Generate dpo_core/data/instructions/instructions.jsonl, the shipped IFEval-style prompt set.

Run from the repository root:

    python -m scripts.make_instruction_set [--out PATH]

It is deterministic (``random.Random(0)``), so a rerun reproduces the committed
file byte for byte. Each row is a base task (task template x topic) followed by
1-3 compatible verifiable-instruction sentences. Three splits:

* train: the training prompts, phrased with PHRASINGS;
* eval: its own task templates *and* topics (no base task shared with train),
  phrased with the same PHRASINGS: the gate's held-out set;
* transfer: its own tasks and topics again, phrased with TRANSFER_PHRASINGS
  (templates that never occur in PHRASINGS) and with TRANSFER_KINDS, kinds
  never seen in train or eval: a gain here is not just the checker's wording
  or kinds learned.

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

SPLIT_SIZES = {"train": 340, "eval": 80, "transfer": 120}  # the CPU demo's time depends on train and eval
MIN_KIND_COUNT = 5  # every train/eval kind appears at least this often in train and in eval
MIN_TRANSFER_KIND_COUNT = 10  # every transfer-only kind appears at least this often in transfer
TRANSFER_BOOST = 2.0  # transfer-only kinds are picked as if used half as often, to reach their count
MIN_PHRASINGS = 4  # training phrasings per kind, so the policy cannot learn one wording
COUNT_SHARES = (0.4, 0.4, 0.2)  # share of rows with 1, 2 and 3 instructions

# Checker kinds that occur only in the transfer split.
TRANSFER_KINDS = frozenset({"no_digits", "end_with_question", "no_exclamation", "min_sentences"})

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
    "Write a simple recipe inspired by {topic}.",
    "Write a short FAQ with questions and answers about {topic}.",
    "Give some practical tips for enjoying {topic}.",
    "Write a short plan for a weekend project about {topic}.",
    "Write a limerick about {topic}.",
    "Compare two imaginary products inspired by {topic}.",
    "Write a haiku about {topic}.",
    "Write a short quiz about {topic}.",
    "Write a how-to guide for a first encounter with {topic}.",
    "Write a short pitch for a startup built around {topic}.",
    "List the pros and cons of a hobby involving {topic}.",
    "Write the script of a short radio ad about {topic}.",
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
    "Write a recipe card for a snack themed around {topic}.",
    "Write a few frequently asked questions about {topic}, each with a short answer.",
    "Write a short itinerary for a day devoted to {topic}.",
    "Write the opening statement of a debate about {topic}.",
)

TRANSFER_TASKS = (
    "Write a short cover letter for a job that involves {topic}.",
    "Draft the opening remarks for a panel discussion on {topic}.",
    "Write a customer review of a guided tour about {topic}.",
    "Write a short monologue by a character who is obsessed with {topic}.",
    "Write the back-cover blurb of a novel about {topic}.",
    "Write instructions for a classroom experiment about {topic}.",
    "Write a short tribute to {topic}.",
    "Summarize a research proposal that studies {topic}.",
    "Write an elevator pitch for a documentary about {topic}.",
    "Invent the rules of a playground game involving {topic}.",
    "Write a polite complaint to a shop about a souvenir related to {topic}.",
    "Outline a short lesson for teaching {topic}.",
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
    "pizza": ("cheese", "slice", "dough", "toppings"),
    "elephants": ("trunk", "herd", "tusks", "memory"),
    "kayaking": ("paddle", "splash", "lake", "current"),
    "video games": ("level", "controller", "score", "player"),
    "birthdays": ("cake", "candles", "presents", "party"),
    "autumn leaves": ("orange", "crunch", "rake", "fall"),
    "cats": ("whiskers", "purr", "nap", "paws"),
    "planets": ("orbit", "rings", "gas", "moons"),
    "bakeries": ("pastry", "flour", "croissant", "early"),
    "picnics": ("blanket", "sandwiches", "ants", "basket"),
    "sea turtles": ("shell", "nest", "hatchlings", "beach"),
    "fountain pens": ("nib", "ink", "smooth", "writing"),
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
    "sunflowers": ("petals", "seeds", "tall", "sun"),
    "canoes": ("paddle", "lake", "wood", "quiet"),
    "puppets": ("strings", "stage", "show", "hands"),
    "carnivals": ("rides", "tickets", "clowns", "popcorn"),
}

TRANSFER_TOPICS = {
    "tea": ("leaves", "kettle", "steep", "cup"),
    "beavers": ("dam", "teeth", "lodge", "wood"),
    "paper airplanes": ("wings", "throw", "glide", "crease"),
    "typewriters": ("keys", "ribbon", "ink", "clack"),
    "violins": ("strings", "bow", "melody", "orchestra"),
    "tide pools": ("crabs", "starfish", "rocks", "shallow"),
    "hedgehogs": ("spines", "curl", "garden", "hedge"),
    "comets": ("tail", "orbit", "ice", "sun"),
    "skateboarding": ("ramp", "wheels", "tricks", "deck"),
    "rock climbing": ("rope", "grip", "harness", "summit"),
    "thrift stores": ("secondhand", "bargain", "racks", "vintage"),
    "snails": ("shell", "slow", "slime", "garden"),
    "fog": ("mist", "gray", "harbor", "damp"),
    "wind chimes": ("breeze", "metal", "porch", "ring"),
    "sandcastles": ("bucket", "moat", "beach", "tower"),
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

# Natural-language sentences per kind, for train and eval; fields are the instruction's args, with
# list args pre-rendered as 'the word "x"' / 'the words "x" and "y"'.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "lowercase": (
        "Your entire answer must be in lowercase letters; no capitals are allowed.",
        "Write everything in lowercase, without a single capital letter.",
        "Do not use any capital letters anywhere in your response.",
        "Please respond using only lowercase letters.",
    ),
    "uppercase": (
        "Your entire response must be written in capital letters.",
        "Write your whole answer in all caps.",
        "Use only uppercase letters in your answer.",
        "Write the full response in uppercase letters only.",
    ),
    "max_words": (
        "Use no more than {n} words.",
        "Your response must not exceed {n} words.",
        "Keep your answer to at most {n} words.",
        "Limit your response to {n} words or fewer.",
    ),
    "min_words": (
        "Your answer must be at least {n} words long.",
        "Write no fewer than {n} words.",
        "Use {n} words or more.",
        "Make your response at least {n} words in length.",
    ),
    "max_sentences": (
        "Use no more than {n} sentences.",
        "Your response should contain at most {n} sentences.",
        "Keep it to {n} sentences or fewer.",
        "Do not write more than {n} sentences.",
    ),
    "exact_paragraphs": (
        "Your response must have exactly {n} paragraphs, separated by blank lines.",
        "Write exactly {n} paragraphs and separate them with the markdown divider ***.",
        "Split your answer into {n} paragraphs separated by empty lines.",
        "Your answer should consist of exactly {n} paragraphs with a blank line between each.",
    ),
    "bullet_count": (
        'Your answer must contain exactly {n} markdown bullet points such as "* This is a point".',
        'Format your response as exactly {n} bullet points, each starting with "- ".',
        "Include exactly {n} bullet points that start with an asterisk and a space.",
        "Use exactly {n} markdown bullet points in your answer.",
    ),
    "include_keywords": (
        "Include {keywords} in your response.",
        "Make sure to use {keywords}.",
        "Your answer must mention {keywords}.",
        "Be sure to include {keywords} somewhere in your answer.",
    ),
    "forbidden_words": (
        "Do not include {words} in your response.",
        "Avoid using {words}.",
        "Your answer must not contain {words}.",
        "Never use {words} in your answer.",
    ),
    "keyword_frequency": (
        'The word "{word}" should appear at least {n} times.',
        'Use the word "{word}" at least {n} times in your answer.',
        'Mention "{word}" {n} or more times.',
        'Include the word "{word}" {n} times or more.',
    ),
    "letter_frequency": (
        'The letter "{letter}" should appear at least {n} times in your response.',
        'Use the letter "{letter}" at least {n} times.',
        'Make sure the letter "{letter}" appears {n} or more times.',
        'Your answer needs at least {n} occurrences of the letter "{letter}".',
    ),
    "start_with": (
        'Begin your response with the words "{phrase}".',
        'Start your answer with "{phrase}".',
        'Your reply must open with the phrase "{phrase}".',
        'The first words of your answer must be "{phrase}".',
    ),
    "end_with": (
        'Finish your response with the exact phrase "{phrase}" and nothing after it.',
        'End your answer with "{phrase}" and do not write anything after that.',
        'The very last words of your response must be "{phrase}".',
        'Conclude with the phrase "{phrase}" and add nothing further.',
    ),
    "json_format": (
        "Wrap your entire output in JSON format.",
        "Your whole answer must be valid JSON; you may put it in a ```json code block.",
        "Format the entire response as a JSON object.",
        "Provide your entire answer in JSON.",
    ),
    "title": (
        "Include a title wrapped in double angular brackets, such as <<my title>>.",
        "Give your answer a title and put it inside double angle brackets, like <<title>>.",
        "Start with a title enclosed in double angular brackets, for example <<a title>>.",
        "Your response needs a title wrapped in << and >>.",
    ),
    "no_commas": (
        "Do not use any commas in your response.",
        "Your entire answer must be free of commas.",
        "Avoid commas completely.",
        "Write your answer without using a single comma.",
    ),
    "quotation": (
        "Wrap your entire response in double quotation marks.",
        "Put your whole answer inside double quotes.",
        "Enclose your full response in double quotation marks.",
        'Begin and end your whole answer with a double quote character (").',
    ),
    "postscript": (
        'At the end of your response, add a postscript starting with "{marker}".',
        'Please add a postscript that begins with "{marker}".',
        'End with a postscript that starts with "{marker}".',
        'Include a postscript at the end, beginning with "{marker}".',
    ),
    "highlighted_sections": (
        "Highlight at least {n} sections of your answer with markdown, for example *highlighted section*.",
        "Use markdown to highlight at least {n} parts of your response, like *this part*.",
        "Mark at least {n} phrases as *highlighted* using single asterisks.",
        "Emphasize at least {n} phrases with markdown italics, like *this*.",
    ),
    "placeholders": (
        "Include at least {n} placeholders in square brackets, such as [address].",
        "Your response must contain at least {n} placeholders represented by square brackets, like [name].",
        "Add at least {n} placeholders in square brackets, for example [date].",
        "Leave at least {n} fill-in-the-blank placeholders written in square brackets, like [city].",
    ),
    "numbered_list": (
        "Present your answer as a numbered list with exactly {n} items (1., 2., and so on).",
        'Write exactly {n} numbered items, starting with "1.".',
        "Give exactly {n} points in a numbered list.",
        "Format your response as a numbered list of exactly {n} items.",
    ),
    "capital_word_frequency": (
        "Use words in all capital letters at most {n} times.",
        "Include no more than {n} words written entirely in capital letters.",
        "Do not use more than {n} all-caps words.",
        "Words in all caps may appear at most {n} times.",
    ),
    "repeat_prompt": (
        'First repeat the request "{text}" word for word without change, then give your answer.',
        'Before you answer, copy this request exactly: "{text}" Then write your response.',
        'Start by restating the request "{text}" exactly as written, then answer it.',
        'Repeat the request word for word first: "{text}" After that, give your response.',
    ),
    "two_responses": (
        "Give two different responses, separated by six asterisk symbols: ******.",
        "Write two different answers and separate them with ******.",
        "Provide two alternative responses separated by exactly six asterisks (******).",
        "Write two distinct responses and put ****** between them.",
    ),
    "sections": (
        "Your response must have {n} sections. "
        "Mark the beginning of each section with SECTION X, such as: SECTION 1.",
        "Divide your answer into {n} sections, labeling them SECTION 1, SECTION 2, and so on.",
        "Organize your response into {n} sections, each starting with SECTION and its number (SECTION 1, ...).",
        "Use {n} sections in your answer and begin each with a header like SECTION 1.",
    ),
}

# The transfer split's sentences: other wordings of the same rules (never a PHRASINGS template),
# and the transfer-only kinds.
TRANSFER_PHRASINGS: dict[str, tuple[str, ...]] = {
    "lowercase": (
        "Keep every letter of the reply in lower case.",
        "Type the reply as if the shift key were broken: small letters only.",
        "No uppercase character should show up anywhere in what you write.",
    ),
    "uppercase": (
        "Shout the whole reply: every letter should be a capital.",
        "Pretend caps lock is stuck on for the entire reply.",
        "Not one lowercase letter may appear in what you write.",
    ),
    "max_words": (
        "Keep the reply short: {n} words is the absolute limit.",
        "The word count of the reply may not go above {n}.",
        "Stay within a budget of {n} words.",
    ),
    "min_words": (
        "The reply needs some substance: {n} words at a minimum.",
        "Aim for a length of {n} words or longer.",
        "Anything under {n} words is too short.",
    ),
    "max_sentences": (
        "Say it in {n} sentences at most.",
        "The reply may contain up to {n} sentences and no more.",
        "Cap the reply at {n} sentences.",
    ),
    "exact_paragraphs": (
        "Lay the reply out as {n} paragraphs, no more and no fewer, with an empty line between them.",
        "The reply should be made of precisely {n} blocks of text separated by blank lines.",
    ),
    "bullet_count": (
        "Give the reply as a bulleted list with {n} entries, no more and no fewer.",
        "Put precisely {n} points in a list, each line opening with a dash or an asterisk.",
        "I need {n} bullets, precisely.",
    ),
    "include_keywords": (
        "Work {keywords} into the reply somewhere.",
        "The reply is incomplete unless it contains {keywords}.",
        "Weave {keywords} into your text.",
    ),
    "forbidden_words": (
        "Steer clear of {words} entirely.",
        "The reply must leave out {words}.",
        "Write the reply without ever using {words}.",
    ),
    "keyword_frequency": (
        'Repeat the word "{word}" so that it shows up {n} times or more.',
        'Work "{word}" into the reply again and again: {n} uses at minimum.',
        'I want to see "{word}" no fewer than {n} times.',
    ),
    "letter_frequency": (
        'Pack the reply with the letter "{letter}": it must occur {n} times or more.',
        'Count the letter "{letter}" in the reply: there should be no fewer than {n} of them.',
    ),
    "start_with": (
        'Open the reply with these exact words: "{phrase}".',
        'Kick things off with "{phrase}".',
        'The reply has to begin "{phrase}".',
    ),
    "end_with": (
        'Close the reply on the words "{phrase}", with nothing following.',
        'Let "{phrase}" be the final words of the reply.',
        'Sign off with "{phrase}" as the very last thing.',
    ),
    "json_format": (
        "Reply with a JSON object and nothing else.",
        "Return the reply as machine-readable JSON.",
        "Encode the whole reply as JSON (an object or an array).",
    ),
    "title": (
        "Put a heading at the top, enclosed like <<this>>.",
        "Name your piece, writing the name between << and >>.",
    ),
    "no_commas": (
        "Leave out every comma.",
        "The comma key is broken, so the reply cannot contain one.",
        "Write without a single comma anywhere.",
    ),
    "quotation": (
        "Put the entire reply between a pair of double quotes.",
        "Present the reply as one quotation: a double quote at the very start and another at the very end.",
    ),
    "postscript": (
        'After the main text, tack on a note that starts with "{marker}".',
        'Close with an afterthought introduced by "{marker}".',
    ),
    "highlighted_sections": (
        "Emphasize {n} or more passages by wrapping them in asterisks, *like so*.",
        "Make at least {n} key phrases stand out with markdown emphasis.",
    ),
    "placeholders": (
        "Leave {n} or more blanks for the reader to fill in, written like [name].",
        "Use at least {n} bracketed placeholders such as [place] in the text.",
    ),
    "numbered_list": (
        "Number your points: precisely {n} of them.",
        "Organize the reply as exactly {n} numbered entries.",
    ),
    "capital_word_frequency": (
        "Go easy on shouting: {n} fully capitalized words at most.",
        "No more than {n} words may be written in full capitals.",
    ),
    "repeat_prompt": (
        'Echo my request back verbatim before answering: "{text}"',
        'Begin by quoting the request exactly, "{text}" and then respond to it.',
    ),
    "two_responses": (
        "Offer two alternative takes, divided by a line of six asterisks (******).",
        "I want two separate versions, with ****** between them.",
    ),
    "sections": (
        "Break the reply into {n} parts headed SECTION 1, SECTION 2 and so on.",
        "Split the reply into {n} labeled parts, each introduced by the word SECTION and its number.",
    ),
    "no_digits": (
        "Spell out any numbers in words; do not use digits.",
        "The reply must not contain a single numeral.",
        "Keep digits out of the reply entirely.",
    ),
    "end_with_question": (
        "Finish the reply with a question for the reader.",
        "The last sentence of the reply must be a question.",
        "End on a question mark.",
    ),
    "no_exclamation": (
        "Keep the tone calm: no exclamation marks.",
        "Do not use the exclamation point anywhere.",
        "Not a single exclamation mark may appear in the reply.",
    ),
    "min_sentences": (
        "Write at least {n} full sentences.",
        "The reply should run to {n} sentences or more.",
        "Use a minimum of {n} sentences.",
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
        "no_digits",
        "no_exclamation",
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
        ("no_digits", "numbered_list"),  # "1." is a digit
        ("no_digits", "sections"),  # so is "SECTION 1"
        ("end_with_question", "end_with"),
        ("end_with_question", "postscript"),
        ("min_sentences", "max_sentences"),
        ("min_sentences", "bullet_count"),  # list items rarely end in a full stop
        ("min_sentences", "numbered_list"),
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
class _Split:
    """How one split is made: its base tasks, its wording of the instructions and the kinds it draws."""

    name: str
    tasks: tuple[str, ...]
    topics: dict[str, tuple[str, ...]]
    phrasings: dict[str, tuple[str, ...]]
    kinds: tuple[str, ...]
    boosted: frozenset[str] = frozenset()  # kinds picked TRANSFER_BOOST times as often as the rest


SEEN_KINDS = tuple(sorted(set(CHECKERS) - TRANSFER_KINDS))
SPLIT_PLANS = (
    _Split("train", TRAIN_TASKS, TRAIN_TOPICS, PHRASINGS, SEEN_KINDS),
    _Split("eval", EVAL_TASKS, EVAL_TOPICS, PHRASINGS, SEEN_KINDS),
    _Split("transfer", TRANSFER_TASKS, TRANSFER_TOPICS, TRANSFER_PHRASINGS, tuple(sorted(CHECKERS)), TRANSFER_KINDS),
)


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
    "no_digits": _no_args,
    "end_with_question": _no_args,
    "no_exclamation": _no_args,
    "min_sentences": _count(3, 5),
}

_KEYWORD_ARGS = ("keywords", "words", "word")
# kind -> characters its response may not contain, so text another instruction requires may not either
_FORBIDDEN_CHARS = {"no_commas": ",", "no_digits": "0123456789", "no_exclamation": "!"}


def _used_keywords(instructions: list[dict]) -> set[str]:
    used: set[str] = set()
    for instr in instructions:
        for key in _KEYWORD_ARGS:
            value = instr["args"].get(key)
            used.update([value] if isinstance(value, str) else value or [])
    return used


def _consistent(instructions: list[dict]) -> bool:
    """Text the response must contain may not break another instruction (commas, digits, forbidden words)."""
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
    for kind, chars in _FORBIDDEN_CHARS.items():
        if kind in by_kind and any(c in text for c in chars for text in required):
            return False
    forbidden = by_kind.get("forbidden_words", {}).get("words", [])
    return not any(re.search(rf"\b{re.escape(w)}\b", t, re.IGNORECASE) for w in forbidden for t in required)


def _pick_instructions(
    rng: random.Random, count: int, usage: Counter[str], split: _Split, task: str, keywords: tuple[str, ...]
) -> list[dict]:
    """Up to `count` mutually compatible instructions of the split's kinds, least-used (boosted kinds
    weighed down) first so every kind is covered."""
    chosen: list[dict] = []
    while len(chosen) < count:
        kinds = [c["kind"] for c in chosen]
        candidates = [k for k in split.kinds if all(compatible(k, c) for c in kinds)]
        rng.shuffle(candidates)
        # stable: random tie-break among equally used kinds
        candidates.sort(key=lambda k: usage[k] / (TRANSFER_BOOST if k in split.boosted else 1.0))
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


def _sentence(rng: random.Random, instr: dict, phrasings: dict[str, tuple[str, ...]]) -> str:
    fields = dict(instr["args"])
    if "keywords" in fields:
        fields["keywords"] = _quoted_list(fields["keywords"], "keyword")
    if "words" in fields:
        fields["words"] = _quoted_list(fields["words"], "word")
    return rng.choice(phrasings[instr["kind"]]).format(**fields)


def _split_rows(rng: random.Random, split: _Split) -> list[dict]:
    size = SPLIT_SIZES[split.name]
    pairs = [(task, topic) for task in split.tasks for topic in split.topics]
    n_one, n_two = round(size * COUNT_SHARES[0]), round(size * COUNT_SHARES[1])
    counts = [1] * n_one + [2] * n_two + [3] * (size - n_one - n_two)
    rng.shuffle(counts)
    usage: Counter[str] = Counter()
    rows = []
    for (template, topic), count in zip(rng.sample(pairs, size), counts, strict=True):
        task = template.format(topic=topic)
        instructions = _pick_instructions(rng, count, usage, split, task, split.topics[topic])
        prompt = " ".join([task, *(_sentence(rng, i, split.phrasings) for i in instructions)])
        rows.append({"prompt": prompt, "instructions": instructions, "split": split.name})
    return rows


def _template_pattern(template: str) -> re.Pattern[str]:
    """A phrasing template as a regex matching any sentence rendered from it, whatever its args."""
    return re.compile(".+?".join(re.escape(part) for part in re.split(r"\{\w+\}", template)))


def _check(rows: list[dict]) -> None:
    """Fail loudly if the generated set breaks a guarantee the pipeline relies on."""
    for row in rows:
        for instr in row["instructions"]:
            validate_instruction(instr)
    by_split = {split: [r for r in rows if r["split"] == split] for split in SPLIT_SIZES}
    for split, size in SPLIT_SIZES.items():
        if len(by_split[split]) != size:
            raise RuntimeError(f"{split}: {len(by_split[split])} rows, expected {size}")
        usage = Counter(i["kind"] for r in by_split[split] for i in r["instructions"])
        if split == "transfer":
            rare = sorted(k for k in TRANSFER_KINDS if usage[k] < MIN_TRANSFER_KIND_COUNT)
            least = MIN_TRANSFER_KIND_COUNT
        else:
            rare = sorted(k for k in SEEN_KINDS if usage[k] < MIN_KIND_COUNT)
            least = MIN_KIND_COUNT
            leaked = sorted(TRANSFER_KINDS & set(usage))
            if leaked:
                raise RuntimeError(f"{split}: transfer-only kinds {leaked} occur outside the transfer split")
        if rare:
            raise RuntimeError(f"{split}: kinds used fewer than {least} times: {rare}")
    prompts = {split: {r["prompt"] for r in split_rows} for split, split_rows in by_split.items()}
    for a, b in (("train", "eval"), ("train", "transfer"), ("eval", "transfer")):
        if prompts[a] & prompts[b]:
            raise RuntimeError(f"a prompt is shared between {a} and {b}")
    shared = {t for p in PHRASINGS.values() for t in p} & {t for p in TRANSFER_PHRASINGS.values() for t in p}
    if shared:
        raise RuntimeError(f"TRANSFER_PHRASINGS repeats PHRASINGS templates: {sorted(shared)}")
    seen_text = [r["prompt"] for r in by_split["train"] + by_split["eval"]]
    for kind, templates in TRANSFER_PHRASINGS.items():
        for template in templates:
            pattern = _template_pattern(template)
            hit = next((p for p in seen_text if pattern.search(p)), None)
            if hit is not None:
                raise RuntimeError(f"transfer phrasing of {kind} {template!r} occurs in a train/eval prompt: {hit!r}")


def build_rows() -> list[dict]:
    """All rows, train then eval then transfer, with ids ifx-0001...; deterministic."""
    if set(ARG_MAKERS) != set(CHECKERS) or set(TRANSFER_PHRASINGS) != set(CHECKERS):
        raise RuntimeError("ARG_MAKERS and TRANSFER_PHRASINGS must cover exactly the registered checker kinds")
    if set(PHRASINGS) != set(SEEN_KINDS):
        raise RuntimeError("PHRASINGS must cover exactly the registered kinds but the transfer-only ones")
    few = sorted(k for k, p in PHRASINGS.items() if len(p) < MIN_PHRASINGS)
    if few:
        raise RuntimeError(f"kinds with fewer than {MIN_PHRASINGS} training phrasings: {few}")
    rng = random.Random(0)
    rows = [row for split in SPLIT_PLANS for row in _split_rows(rng, split)]
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
    print(f"wrote {len(rows)} rows ({', '.join(f'{sizes[s]} {s}' for s in SPLIT_SIZES)}) to {args.out}")
    usage = {s: Counter(i["kind"] for r in rows if r["split"] == s for i in r["instructions"]) for s in SPLIT_SIZES}
    print(f"{'kind':<24}" + "".join(f"{s:>10}" for s in SPLIT_SIZES))
    for kind in sorted(CHECKERS):
        print(f"{kind:<24}" + "".join(f"{usage[s][kind]:>10}" for s in SPLIT_SIZES))


if __name__ == "__main__":
    main()
