"""The style axes the embedded policy's corpus varies, and the words that mark them.

One place for both sides: the corpus generator (``models/corpus.py``) writes replies with these
markers, and the simulator's feature extractor (``simulation/features.py``) measures them. Keeping
the lexicons here stops the two from drifting apart.
"""

from __future__ import annotations

# Axes along which corpus replies vary independently of each other.
STYLE_AXES: tuple[str, ...] = (
    "length",  # short (one sentence) … long (several sentences of detail)
    "emoji",  # none … several emoji
    "formality",  # casual slang … formal register
    "enthusiasm",  # flat … exclamation marks and upbeat words
    "structure",  # prose … bullet list
    "question",  # ends with a follow-up question or not
    "detail",  # generic … topic-specific detail
)

# Emoji used by the corpus. Kept to a small set of single code points so that a byte-level BPE
# learns them as units and the features can count them exactly.
EMOJI: tuple[str, ...] = ("😀", "😊", "👍", "🎉", "🔥", "✨", "🙂", "💡", "🚀", "❤")

FORMAL_MARKERS: tuple[str, ...] = (
    "certainly",
    "furthermore",
    "therefore",
    "moreover",
    "regarding",
    "kindly",
    "consequently",
    "in addition",
    "it is advisable",
    "one should",
)

CASUAL_MARKERS: tuple[str, ...] = (
    "hey",
    "yeah",
    "gonna",
    "kinda",
    "cool",
    "stuff",
    "lol",
    "totally",
    "btw",
    "wanna",
)

ENTHUSIASTIC_MARKERS: tuple[str, ...] = (
    "amazing",
    "awesome",
    "fantastic",
    "love",
    "great",
    "exciting",
    "wonderful",
    "brilliant",
)

BULLET_PREFIX = "- "

# Topics users ask about. Populations (envs/*.yaml) name these; the corpus writes prompts and
# topic-specific detail from the keywords; the features measure topical match with them.
TOPICS: dict[str, tuple[str, ...]] = {
    "cooking": ("recipe", "oven", "garlic", "pasta", "simmer", "spices"),
    "fitness": ("workout", "stretching", "protein", "cardio", "muscles", "rest days"),
    "travel": ("flights", "hotel", "itinerary", "passport", "luggage", "local food"),
    "finance": ("budget", "savings", "interest rate", "index funds", "taxes", "debt"),
    "programming": ("python", "function", "debugging", "unit tests", "git", "variables"),
    "gardening": ("soil", "seeds", "watering", "compost", "sunlight", "pruning"),
    "music": ("guitar", "chords", "practice", "rhythm", "scales", "melody"),
    "health": ("sleep", "hydration", "doctor", "symptoms", "vitamins", "stress"),
    "law": ("contract", "tenant", "liability", "clause", "court", "lawyer"),
    "gaming": ("controller", "level", "strategy", "multiplayer", "console", "speedrun"),
    "parenting": ("toddler", "bedtime", "school", "routine", "tantrums", "homework"),
    "science": ("experiment", "energy", "planets", "cells", "hypothesis", "gravity"),
    "careers": ("resume", "interview", "salary", "manager", "promotion", "skills"),
    "home repair": ("drill", "leak", "paint", "hinge", "tiles", "wiring"),
    "movies": ("director", "plot", "actors", "sequel", "soundtrack", "streaming"),
    "pets": ("puppy", "litter box", "vet", "leash", "treats", "grooming"),
}

# Question templates; ``{topic}`` and ``{kw}`` (a keyword) are filled in.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "Can you help me with {kw}?",
    "What should I know about {kw}?",
    "Any tips on {kw} for {topic}?",
    "How do I get started with {topic}?",
    "I have a question about {kw}.",
    "What is the best way to handle {kw}?",
    "Explain {kw} to me.",
    "Give me advice on {topic}.",
)
