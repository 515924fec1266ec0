"""A deterministic synthetic chat corpus for the embedded tiny policy.

Each example is one user prompt (a topic question from ``styles.PROMPT_TEMPLATES``) and one
assistant reply whose style is drawn *independently* along every axis of ``styles.STYLE_AXES``:
length, emoji, formality, enthusiasm, structure, follow-up question and topical detail. The
independence matters: the later RL stages can only move the policy along axes on which its
warm-started samples already vary, and they must be able to move each one on its own.

About 30% of the examples carry a system message that describes the reply's style in plain
words (``describe_style``), so a persona system prompt can later steer the policy.

Everything is drawn from one ``random.Random(seed)``: the same seed gives the same corpus.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from rlhf_persona.styles import (
    BULLET_PREFIX,
    EMOJI,
    PROMPT_TEMPLATES,
    TOPICS,
)

# The levels of every style axis, in the order of ``styles.STYLE_AXES``.
AXIS_LEVELS: dict[str, tuple[str, ...]] = {
    "length": ("short", "medium", "long"),
    "emoji": ("none", "one", "several"),
    "formality": ("casual", "neutral", "formal"),
    "enthusiasm": ("flat", "high"),
    "structure": ("prose", "bullets"),
    "question": ("no", "yes"),
    "detail": ("generic", "specific"),
}

# Content sentences per length level (openers and follow-up questions come on top).
_SENTENCES = {"short": 1, "medium": 3, "long": 5}

# Advice as bare verb phrases; the register (formality) decides the frame around them. Generic
# advice must not contain any topic keyword, so that ``detail`` stays a clean axis.
_GENERIC_CORES = (
    "start small and build a habit",
    "take it one step at a time",
    "set a clear goal first",
    "keep notes on what works",
    "ask someone with experience",
    "allow enough time to learn",
    "try a few options and compare them",
    "focus on the basics before the details",
    "check how things go every week",
    "keep things simple at first",
    "write down a short plan",
    "be patient and keep going",
)
_SPECIFIC_CORES = (
    "pay close attention to {kw}",
    "learn the basics of {kw} first",
    "read a short guide about {kw}",
    "make a simple plan for {kw}",
    "compare a few options for {kw}",
    "work on {kw} a little every day",
    "keep {kw} in mind for {topic}",
    "look at {kw} before anything else",
    "ask a friend who knows {kw}",
    "get {kw} right and {topic} gets easier",
)

# Frames per register. ``{core}`` is the advice; casual frames always carry a casual marker,
# formal frames a formal one, neutral frames neither.
_FRAMES = {
    "casual": (
        "just {core}",
        "yeah, {core}",
        "totally {core}",
        "{core}, it's kinda easy",
        "btw, {core}",
        "{core} and stuff",
        "gonna say {core}",
        "{core}, lol",
        "you wanna {core}",
    ),
    "neutral": (
        "{core}",
        "you can {core}",
        "it helps to {core}",
        "a good idea is to {core}",
        "try to {core}",
    ),
    "formal": (
        "it is advisable to {core}",
        "one should {core}",
        "kindly {core}",
        "regarding this, one should {core}",
    ),
}
_FORMAL_CONNECTORS = ("furthermore", "moreover", "in addition", "therefore", "consequently")
_LAST_CONNECTOR = "finally"
_OPENERS = {  # first words of the reply, per register (casual greets, formal acknowledges)
    "casual": ("hey, ", "hey there, "),
    "neutral": ("",),
    "formal": ("", "certainly, "),
}
_EXCLAMATIONS = {  # enthusiasm openers, per register
    "casual": ("Oh, awesome!", "I love this!", "So exciting!"),
    "neutral": ("Great question!", "How exciting!", "This is a fantastic topic!"),
    "formal": ("What a wonderful question!", "This is a brilliant topic!"),
}
_QUESTIONS = {  # follow-up questions, per register; ``{about}`` is a keyword or "this"
    "casual": ("wanna know more about {about}?", "got any other stuff you're curious about?"),
    "neutral": ("Do you want more tips on {about}?", "What else would you like to know?"),
    "formal": (
        "Would you like further information regarding {about}?",
        "Shall I elaborate further on {about}?",
    ),
}

# Plain-words descriptions of each level, for system messages and persona prompts.
STYLE_DESCRIPTIONS = {
    "length": {"short": "keep it short", "medium": "give a medium-length answer",
               "long": "give a long, detailed answer"},
    "emoji": {"none": "use no emoji", "one": "use one emoji", "several": "use lots of emoji"},
    "formality": {"casual": "be casual", "neutral": "use a neutral tone", "formal": "be formal"},
    "enthusiasm": {"flat": "stay calm", "high": "sound excited"},
    "structure": {"prose": "write in prose", "bullets": "use a bullet list"},
    "question": {"no": "do not ask a question", "yes": "end with a question"},
    "detail": {"generic": "keep it general", "specific": "be specific to the topic"},
}  # fmt: skip


@dataclass(frozen=True)
class Style:
    """One level per style axis (see ``AXIS_LEVELS``)."""

    length: str
    emoji: str
    formality: str
    enthusiasm: str
    structure: str
    question: str
    detail: str

    @classmethod
    def sample(cls, rng: random.Random) -> Style:
        """Each axis drawn uniformly and independently of the others."""
        return cls(**{axis: rng.choice(levels) for axis, levels in AXIS_LEVELS.items()})


def describe_style(style: Style | dict, axes: list[str] | None = None) -> str:
    """Plain words for a style, e.g. "Keep it short, be casual, and end with a question."

    ``style`` may be a ``Style`` or a partial dict axis → level; ``axes`` picks which to mention.
    """
    levels = asdict(style) if isinstance(style, Style) else dict(style)
    for axis, level in levels.items():
        if level not in AXIS_LEVELS.get(axis, ()):
            raise ValueError(f"unknown style {axis}={level!r}; levels: {AXIS_LEVELS.get(axis)}")
    phrases = [STYLE_DESCRIPTIONS[a][levels[a]] for a in (axes or list(levels)) if a in levels]
    if not phrases:
        return ""
    if len(phrases) > 1:
        phrases[-1] = "and " + phrases[-1]
    text = ", ".join(phrases) if len(phrases) > 2 else " ".join(phrases)
    return text[0].upper() + text[1:] + "."


def _cap(text: str) -> str:
    return text[0].upper() + text[1:] if text else text


def make_prompt(rng: random.Random) -> tuple[str, str, str]:
    """A user question: (prompt, topic, keyword it is about)."""
    topic = rng.choice(sorted(TOPICS))
    kw = rng.choice(TOPICS[topic])
    template = rng.choice(PROMPT_TEMPLATES)
    return template.format(topic=topic, kw=kw), topic, kw


def _content_sentences(style: Style, topic: str, kw: str, rng: random.Random) -> list[str]:
    """The advice sentences, framed in the style's register, ending in ``.`` or ``!``."""
    n = _SENTENCES[style.length]
    if style.detail == "specific":
        others = [k for k in TOPICS[topic] if k != kw]
        kws = [kw, *rng.sample(others, n - 1)] if n > 1 else [kw]
        cores = [
            c.format(kw=k, topic=topic)
            for c, k in zip(rng.sample(_SPECIFIC_CORES, n), kws, strict=True)
        ]
    else:
        cores = rng.sample(_GENERIC_CORES, n)
    end = "!" if style.enthusiasm == "high" else "."
    sentences = []
    for i, core in enumerate(cores):
        text = rng.choice(_FRAMES[style.formality]).format(core=core)
        if 0 < i == n - 1:
            # One fixed word opens the last sentence, so a small model can tell where a reply
            # ends: without it, greedy decoding never leaves a bullet list (the newline that
            # starts another bullet always outweighs the end of the turn).
            text = f"{_LAST_CONNECTOR}, {text}"
        elif style.formality == "formal" and i > 0:
            text = f"{rng.choice(_FORMAL_CONNECTORS)}, {text}"
        if i == 0:
            text = rng.choice(_OPENERS[style.formality]) + text
        sentences.append(_cap(text) + end)
    return sentences


def _add_emoji(lines: list[str], style: Style, rng: random.Random) -> list[str]:
    count = {"none": 0, "one": 1, "several": rng.randint(2, 4)}[style.emoji]
    lines = list(lines)
    for _ in range(count):
        i = rng.randrange(len(lines))
        lines[i] = f"{lines[i]} {rng.choice(EMOJI)}"
    return lines


def make_reply(style: Style, topic: str, kw: str, rng: random.Random) -> str:
    """An assistant reply to a question about ``kw`` (in ``topic``) in the given style."""
    body = _add_emoji(_content_sentences(style, topic, kw, rng), style, rng)
    head = [rng.choice(_EXCLAMATIONS[style.formality])] if style.enthusiasm == "high" else []
    tail = []
    if style.question == "yes":
        about = kw if style.detail == "specific" else "this"
        tail = [_cap(rng.choice(_QUESTIONS[style.formality]).format(about=about))]
    if style.structure == "bullets":
        return "\n".join(head + [BULLET_PREFIX + line for line in body] + tail)
    return " ".join(head + body + tail)


def make_example(rng: random.Random, system_share: float = 0.3) -> dict:
    """One conversational prompt-completion example plus its style (for analysis)."""
    prompt, topic, kw = make_prompt(rng)
    style = Style.sample(rng)
    messages = []
    if rng.random() < system_share:
        axes = rng.sample(list(AXIS_LEVELS), rng.randint(2, len(AXIS_LEVELS)))
        axes.sort(key=list(AXIS_LEVELS).index)
        messages.append({"role": "system", "content": describe_style(style, axes)})
    messages.append({"role": "user", "content": prompt})
    return {
        "prompt": messages,
        "completion": [{"role": "assistant", "content": make_reply(style, topic, kw, rng)}],
        "topic": topic,
        "style": asdict(style),
    }


def build_corpus(n: int, seed: int, system_share: float = 0.3) -> list[dict]:
    """``n`` examples, identical for the same ``(n, seed, system_share)``."""
    rng = random.Random(seed)
    return [make_example(rng, system_share) for _ in range(n)]


def corpus_texts(examples: list[dict]) -> list[str]:
    """Every message text of the corpus (what the tokenizer is trained on)."""
    return [m["content"] for ex in examples for m in ex["prompt"] + ex["completion"]]
