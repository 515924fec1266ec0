"""Simulated users' feedback: utility → thumbs / ratings / pairwise choices / abstention.

Noise model (β = the population's ``rationality`` per channel, τ = the user's threshold):

* utility ``u = pref · (features − 0.5)`` (0.5 is every feature's neutral point);
* thumbs: ``P(up) = σ(β_thumbs (u − τ))``; value +1 up, −1 down;
* rating 1..5: ordered logit, ``rating = 1 + #{k : u − τ + ε / β_rating > c_k}`` with ε standard
  logistic and cutpoints ``c`` = ``rating_cutpoints``;
* pairwise (Bradley–Terry): ``P(reply ≻ other) = σ(β_pairwise (u_reply − u_other))``; value +1
  when ``reply`` is chosen, −1 when ``other_reply`` is;
* abstain: no event;
* reason tags: a thumbs-down or a rating ≤ 2 carries, with probability ``reason_tag_rate``, the
  tags of the (up to two) features that cost the user the most utility (each costing at least
  ``TAG_MIN_COST``), e.g. "too long", "too formal".

``FeedbackSimulator.respond_features`` is the fast, vectorised path (arrays in, arrays out);
``FeedbackSimulator.respond`` takes texts and returns event dicts in the feedback store's shape.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rlhf_persona.simulation.features import FEATURE_NAMES, NEUTRAL, reply_features
from rlhf_persona.simulation.population import Users, no_gc, rng_for
from rlhf_persona.simulation.schema import CHANNELS

STREAM_FEEDBACK = 3
THUMBS, RATING, PAIRWISE, ABSTAIN = range(4)
KIND_CODES = {name: i for i, name in enumerate(CHANNELS)}
TAG_MIN_COST = 0.1
MAX_TAGS = 2
START_TIME = np.datetime64("2025-01-06T09:00:00", "s")
ROUND_SECONDS = 7 * 24 * 3600  # one simulated week per round

# (tag when the feature is below neutral, tag when above) — what a user says it got wrong.
REASON_TAGS: dict[str, tuple[str | None, str | None]] = {
    "length": ("too short", "too long"),
    "emoji": ("needs some emoji", "too many emoji"),
    "formality": ("too casual", "too formal"),
    "enthusiasm": ("too flat", "too enthusiastic"),
    "structure": ("wanted a list", "too listy"),
    "question": ("no follow-up question", "unwanted question"),
    "detail": ("not detailed enough", "too much detail"),
    "relevance": ("off topic", None),
    "interest_match": ("not my interests", None),
}
_TAG_TABLE = np.array([REASON_TAGS[f] for f in FEATURE_NAMES], dtype=object)  # [F, 2]


def _batch_crc(*columns) -> int:
    """CRC-32 of text columns (joined at C speed: one pass, not one hash per event)."""
    crc = 0
    for col in columns:
        crc = zlib.crc32("\x1f".join(col).encode(), crc)
    return crc


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def utility(pref: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Row-wise utility ``pref · (features − 0.5)`` for matching rows of two [n, F] arrays."""
    return np.einsum("ij,ij->i", pref, features - NEUTRAL)


@dataclass
class FeedbackBatch:
    """Vectorised feedback: one row per (user, reply) pair; ``kind`` codes index CHANNELS."""

    user_idx: np.ndarray  # [n] int
    kind: np.ndarray  # [n] int8: THUMBS, RATING, PAIRWISE, ABSTAIN
    value: np.ndarray  # [n] int8: ±1 thumbs/pairwise, 1..5 rating, 0 abstain
    tags: dict[int, list[str]]  # row → reason tags; rows without tags are absent
    round: int

    def __len__(self) -> int:
        return len(self.kind)

    def tag_lists(self) -> list[list[str]]:
        """Reason tags per row ([] where none)."""
        return [self.tags.get(i, []) for i in range(len(self.kind))]

    @property
    def kinds(self) -> list[str]:
        return [CHANNELS[k] for k in self.kind]


class FeedbackSimulator:
    """Draws the feedback of sampled ``users``; deterministic in (users, seed, call order).

    Args:
        users: from ``Population.sample_users``.
        seed: seeds the feedback noise (independently of the users' and prompts' draws).
        embed: compute the MiniLM ``relevance`` feature for text inputs (False: neutral 0.5).
    """

    def __init__(self, users: Users, seed: int = 0, embed: bool = True) -> None:
        self.users = users
        self.seed = int(seed)
        self.embed = embed
        self.rng = rng_for(seed, STREAM_FEEDBACK)
        self.n_events = 0  # events emitted so far: event ids and timestamps continue from here
        pop = users.population
        self._beta = pop.rationality
        self._cuts = np.asarray(pop.rating_cutpoints)
        self._tag_rate = pop.reason_tag_rate
        self._id_prefix = f"sim-{pop.name}-u{users.seed}-f{self.seed}"

    # ------------------------------------------------------------------ fast path
    def draw_kinds(self, user_idx: np.ndarray, pairwise: bool) -> np.ndarray:
        """Channel per row from the user's channel mix; without a second reply, pairwise is
        impossible and its probability is spread over the other channels."""
        probs = self.users.truth.channel_probs[user_idx]
        if not pairwise:
            probs = probs.copy()
            probs[:, PAIRWISE] = 0.0
            probs /= probs.sum(1, keepdims=True)
        cum = np.cumsum(probs, axis=1)
        u = self.rng.random(len(user_idx))[:, None]
        return np.minimum((u > cum).sum(1), len(CHANNELS) - 1).astype(np.int8)

    def respond_features(
        self,
        user_idx: Sequence[int] | np.ndarray,
        features: np.ndarray,
        other_features: np.ndarray | None = None,
        kind: str | np.ndarray | None = None,
        round: int = 0,
    ) -> FeedbackBatch:
        """Feedback for rows of precomputed features (``reply_features`` output).

        Args:
            user_idx: user index (into ``users``) per row.
            features: [n, F] features of the reply each user saw.
            other_features: [n, F] features of the second reply (pairwise channel).
            kind: one channel name for every row, an array of codes, or None to draw each
                row's channel from the user's mix.
            round: simulation round (selects drifted preferences).
        """
        idx = np.asarray(user_idx, dtype=np.int64)
        n = len(idx)
        kinds = self._kinds(idx, kind, other_features is not None)
        pref = self.users.preferences(round)[idx]
        u = utility(pref, features)
        rel = u - self.users.truth.threshold[idx]
        noise = self.rng.random(n)
        value = np.zeros(n, dtype=np.int8)
        b = self._beta
        m = kinds == THUMBS
        value[m] = np.where(noise[m] < sigmoid(b.thumbs * rel[m]), 1, -1)
        m = kinds == RATING
        if m.any():
            eps = np.log(noise[m]) - np.log1p(-noise[m])  # standard logistic
            latent = rel[m] + eps / b.rating
            value[m] = 1 + (latent[:, None] > self._cuts[None, :]).sum(1)
        m = kinds == PAIRWISE
        if m.any():
            if other_features is None:
                raise ValueError("pairwise feedback needs other_features")
            u_other = utility(pref[m], other_features[m])
            value[m] = np.where(noise[m] < sigmoid(b.pairwise * (u[m] - u_other)), 1, -1)
        tags = self._reason_tags(pref, features, kinds, value)
        return FeedbackBatch(idx, kinds, value, tags, round)

    def _kinds(self, idx: np.ndarray, kind, pairwise: bool) -> np.ndarray:
        if kind is None:
            return self.draw_kinds(idx, pairwise)
        if isinstance(kind, str):
            if kind not in KIND_CODES:
                raise ValueError(f"unknown feedback kind {kind!r} (known: {', '.join(CHANNELS)})")
            return np.full(len(idx), KIND_CODES[kind], dtype=np.int8)
        return np.asarray(kind, dtype=np.int8)

    def _reason_tags(self, pref, features, kinds, value) -> dict[int, list[str]]:
        """Tags for negative judgements: the features costing the user the most utility."""
        negative = ((kinds == THUMBS) & (value == -1)) | ((kinds == RATING) & (value <= 2))
        keep = self.rng.random(len(kinds)) < self._tag_rate
        rows = np.flatnonzero(negative & keep)
        if not len(rows):
            return {}
        cost = -pref[rows] * (features[rows] - NEUTRAL)  # utility lost per feature
        top = np.argsort(-cost, axis=1)[:, :MAX_TAGS]
        top_cost = np.take_along_axis(cost, top, axis=1)
        above = np.take_along_axis(features[rows], top, axis=1) > NEUTRAL
        names = _TAG_TABLE[top, above.astype(int)]  # [rows, MAX_TAGS] tag or None
        names[top_cost < TAG_MIN_COST] = None
        tags = {}
        for r, row in zip(rows.tolist(), names.tolist(), strict=True):
            row_tags = [t for t in row if t is not None]
            if row_tags:
                tags[r] = row_tags
        return tags

    # ------------------------------------------------------------------ events
    def events(
        self,
        batch: FeedbackBatch,
        prompts: Sequence[str],
        replies: Sequence[str],
        other_replies: Sequence[str] | None = None,
    ) -> list[dict]:
        """Event dicts (the feedback store's contract) for every non-abstaining row.

        ``event_id`` = simulator prefix (population, users' seed, feedback seed), round, a CRC
        of the batch's content (users, prompts, replies, values) and the event number: replaying
        a simulation gives the same ids, and two simulators misconfigured with one seed
        (practically) never give one id to different events.
        """
        rows = np.flatnonzero(batch.kind != ABSTAIN)
        start = self.n_events
        self.n_events += len(rows)
        seconds = START_TIME + batch.round * ROUND_SECONDS + start + np.arange(len(rows))
        stamps = np.datetime_as_string(seconds, unit="s", timezone="UTC").tolist()
        # Column lists first (list comprehensions), then one dict per event.
        ids = self.users.ids
        uids = [ids[i] for i in batch.user_idx[rows].tolist()]
        kinds = batch.kind[rows].tolist()
        rows_l = rows.tolist()
        p_col = [prompts[r] for r in rows_l]
        r_col = [replies[r] for r in rows_l]
        o_col: list[str | None] = [None] * len(rows_l)
        if other_replies is not None:
            pair = zip(rows_l, kinds, strict=True)
            o_col = [other_replies[r] if k == PAIRWISE else None for r, k in pair]
        values = batch.value[rows].tolist()
        fingerprint = _batch_crc(uids, p_col, r_col, [o or "" for o in o_col], map(str, values))
        prefix = f"{self._id_prefix}-r{batch.round}-{fingerprint:08x}-"
        tags = batch.tags
        with no_gc():  # only acyclic dicts are built: skip the collector's repeated passes
            return [
                {
                    "event_id": f"{prefix}{start + j}",
                    "user_id": u,
                    "kind": CHANNELS[k],
                    "prompt": p,
                    "reply": r,
                    "other_reply": o,
                    "value": v,
                    "reason_tags": tags.get(row, []),
                    "comment": None,
                    "created_at": t,
                }
                for j, (row, u, k, p, r, o, v, t) in enumerate(
                    zip(rows_l, uids, kinds, p_col, r_col, o_col, values, stamps, strict=True)
                )
            ]  # fmt: skip

    def respond(
        self,
        user_idx: Sequence[int] | np.ndarray,
        prompts: Sequence[str],
        replies: Sequence[str],
        other_replies: Sequence[str] | None = None,
        kind: str | None = None,
        round: int = 0,
    ) -> list[dict]:
        """Feedback events of users ``user_idx`` on ``replies`` (texts) to ``prompts``."""
        batch, _ = self.respond_texts(user_idx, prompts, replies, other_replies, kind, round)
        return self.events(batch, prompts, replies, other_replies)

    def respond_texts(
        self,
        user_idx: Sequence[int] | np.ndarray,
        prompts: Sequence[str],
        replies: Sequence[str],
        other_replies: Sequence[str] | None = None,
        kind: str | None = None,
        round: int = 0,
    ) -> tuple[FeedbackBatch, np.ndarray]:
        """Like ``respond`` but returns the batch and the reply features (for evaluation)."""
        idx = np.asarray(user_idx, dtype=np.int64)
        interests = [self.users.interests[i] for i in idx]
        feats = reply_features(prompts, replies, interests, embed=self.embed)
        other = None
        if other_replies is not None:
            other = reply_features(prompts, other_replies, interests, embed=self.embed)
        return self.respond_features(idx, feats, other, kind, round), feats
