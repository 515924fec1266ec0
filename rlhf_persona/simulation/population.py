"""Sampling users (public profile + hidden truth) and their prompts from a population.

Each user gets a segment (by share), a profile drawn from the segment's distributions (which
overlap across segments, so a profile only partly reveals the segment), and a hidden preference
vector = segment mean + normal noise of the segment's ``individual_sd``, plus a thumbs threshold.
The hidden part lives in ``Users.truth``: only evaluation (``oracle``) and the simulated feedback
may read it, never training code.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from rlhf_persona import styles
from rlhf_persona.simulation.features import FEATURE_INDEX, FEATURE_NAMES
from rlhf_persona.simulation.schema import CHANNELS, Population, Segment

# Stream ids keep the random draws of users, prompts and feedback independent of each other.
STREAM_USERS, STREAM_PROMPTS = 1, 2
# A prompt is about one of the user's interests with this probability, else a segment topic.
P_PROMPT_FROM_INTERESTS = 0.7


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic containers (user
    profiles, event dicts): its repeated passes otherwise dominate the run time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def rng_for(seed: int, stream: int, *extra: int) -> np.random.Generator:
    """A generator for one purpose (stream) of one seed, independent of the others."""
    return np.random.default_rng([int(seed), stream, *extra])


@dataclass
class Truth:
    """The hidden side of users: evaluation and the simulator only."""

    segment: np.ndarray  # [n] int, index into population.segments
    pref: np.ndarray  # [n, F] preference weights before drift
    threshold: np.ndarray  # [n] thumbs threshold (utility units)
    channel_probs: np.ndarray  # [n, len(CHANNELS)]


@dataclass
class Users:
    """N sampled users: ids and profiles (public), and ``truth`` (hidden)."""

    population: Population
    seed: int
    ids: list[str]
    profile_columns: dict[str, object]  # field → np.ndarray (str / float) or list[list[str]]
    truth: Truth = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def interests(self) -> list[list[str]]:
        return self.profile_columns["interests"]  # type: ignore[return-value]

    def profile(self, i: int) -> dict:
        """User ``i``'s profile as the contract's dict (str, float, list[str] values)."""
        out: dict = {}
        for key, col in self.profile_columns.items():
            value = col[i]
            out[key] = (
                list(value)
                if key == "interests"
                else (float(value) if isinstance(value, np.floating) else str(value))
            )
        return out

    def records(self) -> list[dict]:
        """``[{"user_id", "profile"}]`` for every user: what a store or a segmenter may see."""
        return [{"user_id": uid, "profile": self.profile(i)} for i, uid in enumerate(self.ids)]

    def preferences(self, round: int = 0) -> np.ndarray:
        """Hidden preference matrix [n, F] in force during ``round`` (drift applied)."""
        pref = self.truth.pref
        shifts = [d for d in self.population.drift if round > d.after_round]
        if not shifts:
            return pref
        pref = pref.copy()
        names = self.population.segment_names
        for d in shifts:
            rows = self.truth.segment == names.index(d.segment)
            for feat, delta in d.shift.items():
                pref[rows, FEATURE_INDEX[feat]] += delta
        return pref

    def segment_names(self) -> list[str]:
        """Hidden segment name per user (evaluation only)."""
        names = np.array(self.population.segment_names, dtype=object)
        return list(names[self.truth.segment])

    def index(self, user_id: str) -> int:
        if not hasattr(self, "_index"):
            self._index = {u: i for i, u in enumerate(self.ids)}
        return self._index[user_id]


def segment_mean(segment: Segment) -> np.ndarray:
    """Mean preference vector of a segment over FEATURE_NAMES (missing features are 0)."""
    return np.array([segment.preference.get(f, 0.0) for f in FEATURE_NAMES])


def segment_sd(segment: Segment) -> np.ndarray:
    """Per-feature SD of individual variation around the segment mean."""
    sd = segment.individual_sd
    if isinstance(sd, dict):
        return np.array([sd.get(f, 0.0) for f in FEATURE_NAMES])
    return np.full(len(FEATURE_NAMES), float(sd))


def _weighted_topk(rng, topics: dict[str, float], ks: np.ndarray) -> list[list[str]]:
    """For each k in ``ks``, k distinct topics drawn by weight (Gumbel top-k, vectorised)."""
    names = np.array(list(topics))
    weights = np.array(list(topics.values()))
    logw = np.where(weights > 0, np.log(np.maximum(weights, 1e-300)), -np.inf)
    keys = logw + rng.gumbel(size=(len(ks), len(names)))
    order = np.argsort(-keys, axis=1)
    return [names[row[:k]].tolist() for row, k in zip(order, ks, strict=True)]


def _sample_profiles(rng, segment: Segment, n: int) -> dict[str, object]:
    spec = segment.profile
    cols: dict[str, object] = {}
    for key, dist in spec.categorical.items():
        values = np.array(list(dist), dtype=object)
        p = np.array(list(dist.values()), dtype=float)
        cols[key] = values[rng.choice(len(values), size=n, p=p / p.sum())]
    for key, num in spec.numeric.items():
        x = rng.normal(num.mean, num.sd, size=n)
        cols[key] = np.clip(x, num.min, num.max) if (num.min, num.max) != (None, None) else x
    lo, hi = spec.interests.count
    cols["interests"] = _weighted_topk(rng, spec.interests.topics, rng.integers(lo, hi + 1, n))
    return cols


def sample_users(population: Population, n: int | None = None, seed: int = 0) -> Users:
    """Sample ``n`` users (default ``population.default_users``), deterministic in ``seed``."""
    n = population.default_users if n is None else int(n)
    if n < 1:
        raise ValueError(f"need at least one user (got {n})")
    rng = rng_for(seed, STREAM_USERS)
    shares = np.array(population.shares)
    segment = rng.choice(len(shares), size=n, p=shares / shares.sum())
    n_feat = len(FEATURE_NAMES)
    pref = np.empty((n, n_feat))
    threshold = np.empty(n)
    channel_probs = np.empty((n, len(CHANNELS)))
    parts: list[tuple[np.ndarray, dict[str, object]]] = []
    for s, seg in enumerate(population.segments):
        rows = np.flatnonzero(segment == s)
        m = len(rows)
        pref[rows] = segment_mean(seg) + rng.normal(size=(m, n_feat)) * segment_sd(seg)
        threshold[rows] = rng.normal(seg.threshold.mean, seg.threshold.sd, size=m)
        channel_probs[rows] = (seg.channels or population.channels).probs()
        with no_gc():
            parts.append((rows, _sample_profiles(rng, seg, m)))
    with no_gc():
        columns = _merge_columns(parts, n)
    width = len(str(n - 1))
    ids = [f"{population.name}-s{seed}-u{i:0{width}d}" for i in range(n)]
    return Users(population, seed, ids, columns, Truth(segment, pref, threshold, channel_probs))


def _merge_columns(parts, n: int) -> dict[str, object]:
    """Scatter each segment's profile columns back into user order."""
    columns: dict[str, object] = {}
    for key in parts[0][1]:
        if key == "interests":
            merged: list = [None] * n
            for rows, cols in parts:
                for r, v in zip(rows, cols[key], strict=True):
                    merged[r] = v
            columns[key] = merged
        else:
            sample = parts[0][1][key]
            arr = np.empty(n, dtype=sample.dtype)
            for rows, cols in parts:
                arr[rows] = cols[key]
            columns[key] = arr
    return columns


def sample_prompts(
    users: Users, user_idx: np.ndarray, seed: int = 0, round: int = 0
) -> tuple[list[str], list[str]]:
    """One prompt per entry of ``user_idx`` and its topic, deterministic in (seed, round).

    The topic is one of the user's interests (probability ``P_PROMPT_FROM_INTERESTS``) or else
    drawn from the segment's topic weights; the text fills a ``styles.PROMPT_TEMPLATES`` template
    with the topic and one of its keywords.
    """
    rng = rng_for(seed, STREAM_PROMPTS, round)
    user_idx = np.asarray(user_idx)
    segs = users.population.segments
    from_interest = rng.random(len(user_idx)) < P_PROMPT_FROM_INTERESTS
    picks = rng.random((len(user_idx), 3))
    templates = styles.PROMPT_TEMPLATES
    prompts, topics = [], []
    for j, u in enumerate(user_idx):
        if from_interest[j]:
            options = users.interests[u]
            topic = options[int(picks[j, 0] * len(options))]
        else:
            weights = segs[users.truth.segment[u]].topics
            topic = _pick_weighted(weights, picks[j, 0])
        keywords = styles.TOPICS[topic]
        kw = keywords[int(picks[j, 1] * len(keywords))]
        template = templates[int(picks[j, 2] * len(templates))]
        prompts.append(template.format(topic=topic, kw=kw))
        topics.append(topic)
    return prompts, topics


def _pick_weighted(weights: dict[str, float], u: float) -> str:
    total = sum(weights.values())
    acc = 0.0
    for name, w in weights.items():
        acc += w / total
        if u < acc:
            return name
    return next(reversed(weights))
