"""Measurable reply features: what a simulated user's hidden preferences are defined over.

``reply_features(prompts, replies, interests=None)`` maps each (prompt, reply) pair to a vector of
``len(FEATURE_NAMES)`` numbers, each in [0, 1], deterministic, measured with the same lexicons
(``rlhf_persona.styles``) that the embedded policy's corpus writes its styles with:

=================  ==========================================================================
``length``         words, log-scaled: 8 words → 0, every doubling +1/3, 64+ words → 1
``emoji``          emoji count / 3, capped at 1
``formality``      0.5 + (formal markers − casual markers) / 4, clipped to [0, 1]
``enthusiasm``     (exclamation marks + enthusiastic words) / 4, capped at 1
``structure``      bullet lines ("- ", "* ", "1. ") / 2, capped at 1
``question``       1 if the reply ends with a (follow-up) question, else 0
``detail``         distinct topic keywords (not topic names) of the prompt's topic (of any topic
                   if the prompt names none) in the reply / 2, capped at 1
``relevance``      MiniLM cosine(prompt, reply), rescaled: (cos − 0.1) / 0.6 clipped to [0, 1];
                   0.5 (neutral) when the embedding is skipped (``embed=False``)
``interest_match`` distinct keywords or topic names of the user's interests in the reply / 2,
                   capped at 1; 0.5 (neutral) when no interests are given
=================  ==========================================================================

0.5 is the neutral point of every feature: utilities are ``pref · (features − 0.5)``
(``user.utility``), so a feature that could not be measured costs and earns nothing. Scaling
every feature to [0, 1] keeps preference weights comparable across features.

MiniLM embeddings are computed in batches and cached in memory by text hash, so evaluating the
same replies again (another user, another round) does not re-encode them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

import numpy as np

from rlhf_persona import styles

FEATURE_NAMES: tuple[str, ...] = (
    "length",
    "emoji",
    "formality",
    "enthusiasm",
    "structure",
    "question",
    "detail",
    "relevance",
    "interest_match",
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
NEUTRAL = 0.5
ENCODER_SPEC = "embedded:minilm"

# Corpus emoji plus the common emoji blocks, so a hub policy's emoji count too.
_EMOJI_RE = re.compile(
    "[" + "".join(styles.EMOJI) + "\U0001f300-\U0001faff\u2600-\u27bf\u2b50\u2764]"
)


_BULLET_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
_QUESTION_END_RE = re.compile(r"\?[\s\W]*$")  # "?" followed only by spaces/emoji/punctuation
_WORD_RE = re.compile(r"[a-z]+")

# One lexicon of lower-case word n-grams → what they mark: a register marker class or, for topic
# keywords and topic names, the topic. Scanning n-grams of the lower-cased words is the same as
# whole-word, case-insensitive matching, and one dict lookup per n-gram keeps it fast.
_FORMAL, _CASUAL, _ENTHUSIASTIC = "<formal>", "<casual>", "<enthusiastic>"
_LEXICON: dict[str, list[str]] = {}
for _cls, _words in (
    (_FORMAL, styles.FORMAL_MARKERS),
    (_CASUAL, styles.CASUAL_MARKERS),
    (_ENTHUSIASTIC, styles.ENTHUSIASTIC_MARKERS),
):
    for _w in _words:
        _LEXICON.setdefault(_w.lower(), []).append(_cls)
_KEYWORD_TOPIC: dict[str, str] = {}  # keyword or topic name → topic
for _topic, _keywords in styles.TOPICS.items():
    for _kw in (_topic, *_keywords):
        _KEYWORD_TOPIC[_kw.lower()] = _topic
        _LEXICON.setdefault(_kw.lower(), []).append(_kw.lower())
_MAX_NGRAM = max(len(k.split()) for k in _LEXICON)
_TOPIC_NAMES = frozenset(styles.TOPICS)


def _scan(text: str) -> tuple[dict[str, int], set[str]]:
    """Marker counts per class and the distinct topic words of ``text`` (one pass)."""
    tokens = _WORD_RE.findall(text.lower())
    counts = {_FORMAL: 0, _CASUAL: 0, _ENTHUSIASTIC: 0}
    words: set[str] = set()
    for n in range(1, _MAX_NGRAM + 1):
        grams = (
            tokens if n == 1 else [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        )
        for gram in grams:
            for tag in _LEXICON.get(gram, ()):
                if tag in counts:
                    counts[tag] += 1
                else:
                    words.add(tag)
    return counts, words


def topic_words(text: str) -> set[str]:
    """The distinct topic keywords and topic names (lower case) that ``text`` mentions."""
    return _scan(text)[1]


def prompt_topics(prompt: str) -> set[str]:
    """Topics (``styles.TOPICS`` names) a prompt mentions by name or keyword."""
    return {_KEYWORD_TOPIC[w] for w in topic_words(prompt)}


def _style_row(reply: str) -> tuple[tuple[float, ...], set[str]]:
    """(length, emoji, formality, enthusiasm, structure, question) and the topic words."""
    counts, words = _scan(reply)
    n_words = len(reply.split())
    length = math.log2(max(n_words, 1) / 8.0) / 3.0
    emoji = len(_EMOJI_RE.findall(reply)) / 3.0
    formality = 0.5 + (counts[_FORMAL] - counts[_CASUAL]) / 4.0
    enthusiasm = (reply.count("!") + counts[_ENTHUSIASTIC]) / 4.0
    structure = len(_BULLET_RE.findall(reply)) / 2.0
    question = 1.0 if _QUESTION_END_RE.search(reply) else 0.0
    return (length, emoji, formality, enthusiasm, structure, question), words


def _detail(prompt_words: set[str], reply_words: set[str]) -> float:
    topics = {_KEYWORD_TOPIC[w] for w in prompt_words}
    keywords = reply_words - _TOPIC_NAMES
    if topics:
        keywords = {w for w in keywords if _KEYWORD_TOPIC[w] in topics}
    return len(keywords) / 2.0


def _interest_match(reply_words: set[str], interests: Sequence[str] | None) -> float:
    if interests is None:
        return NEUTRAL
    wanted = set(interests)
    return sum(_KEYWORD_TOPIC[w] in wanted for w in reply_words) / 2.0


def reply_features(
    prompts: Sequence[str],
    replies: Sequence[str],
    interests: Sequence[Sequence[str] | None] | None = None,
    *,
    embed: bool = True,
    batch_size: int = 128,
) -> np.ndarray:
    """Feature matrix ``[len(replies), len(FEATURE_NAMES)]`` (float32, every value in [0, 1]).

    Args:
        prompts: the prompt each reply answers (same length as ``replies``).
        replies: reply texts.
        interests: per row, the user's interests (``styles.TOPICS`` names) for
            ``interest_match``; None (or a None row) leaves that feature neutral (0.5).
        embed: compute ``relevance`` with MiniLM; False leaves it neutral (0.5), ~100× faster.
        batch_size: MiniLM batch size.
    """
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    if interests is not None and len(interests) != len(replies):
        raise ValueError(f"{len(interests)} interest lists but {len(replies)} replies")
    n = len(replies)
    out = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    style_cache: dict[str, tuple[tuple[float, ...], set[str]]] = {}
    prompt_cache: dict[str, set[str]] = {}
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        # Replies repeat across users (one reply shown to many users): measure each text once.
        cached = style_cache.get(reply)
        if cached is None:
            cached = style_cache[reply] = _style_row(reply)
        style, reply_words = cached
        p_words = prompt_cache.get(prompt)
        if p_words is None:
            p_words = prompt_cache[prompt] = topic_words(prompt)
        out[i, :6] = style
        out[i, 6] = _detail(p_words, reply_words)
        out[i, 8] = _interest_match(reply_words, None if interests is None else interests[i])
    out[:, 7] = relevance(prompts, replies, batch_size=batch_size) if embed and n else NEUTRAL
    np.clip(out, 0.0, 1.0, out=out)
    return out


# ----------------------------------------------------------------------------- embeddings

_EMBED_CACHE: dict[bytes, np.ndarray] = {}
_EMBED_CACHE_MAX = 500_000
_ENCODER: tuple | None = None


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _encoder():
    """The MiniLM encoder, loaded once per process (CPU, eval mode)."""
    global _ENCODER
    if _ENCODER is None:
        from rlhf_persona.models import load_encoder

        model, tokenizer = load_encoder(ENCODER_SPEC)
        model.eval()
        _ENCODER = (model, tokenizer)
    return _ENCODER


def embed_texts(texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """L2-normalised MiniLM sentence embeddings (mean pooling), cached by text hash."""
    keys = [_text_key(t) for t in texts]
    missing = list(
        {k: t for k, t in zip(keys, texts, strict=True) if k not in _EMBED_CACHE}.items()
    )
    missing.sort(key=lambda kt: len(kt[1]))  # similar lengths per batch: less padding
    if missing:
        if len(_EMBED_CACHE) + len(missing) > _EMBED_CACHE_MAX:
            _EMBED_CACHE.clear()
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            vecs = _encode([t for _, t in chunk])
            _EMBED_CACHE.update((k, v) for (k, _), v in zip(chunk, vecs, strict=True))
    return np.stack([_EMBED_CACHE[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)


def _encode(texts: list[str]) -> np.ndarray:
    import torch

    model, tokenizer = _encoder()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.float().cpu().numpy()


def relevance(prompts: Sequence[str], replies: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """MiniLM cosine between each prompt and its reply, rescaled to [0, 1] (see module doc)."""
    cos = np.einsum("ij,ij->i", embed_texts(prompts, batch_size), embed_texts(replies, batch_size))
    return np.clip((cos - 0.1) / 0.6, 0.0, 1.0)


def clear_embedding_cache() -> None:
    """Forget cached embeddings (the encoder stays loaded)."""
    _EMBED_CACHE.clear()
