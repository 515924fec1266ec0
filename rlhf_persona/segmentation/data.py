"""From the feedback store (or plain user / event dicts) to a :class:`UserTable`, and back.

Behaviour comes from the users' own feedback events only:

- ``"features"`` mode (chatbot replies): each event's reply is measured with
  ``rlhf_persona.simulation.features.reply_features`` (observable text features: length, emoji,
  formality, …), standardised, and each user's preference direction is the ridge fit of their
  thumbs (+1/-1), centred ratings and pairwise choices (feature differences) on them.
- ``"items"`` mode (Polis-style votes on statements): each user's vote on every item, missing 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_persona.errors import UserError
from rlhf_persona.segmentation.features import (
    BehaviourMode,
    UserTable,
    feature_stats,
    preference_directions,
    vote_matrix,
)

KINDS = ("thumbs", "rating", "pairwise")


def _signal(event: dict) -> float | None:
    """The event's reward signal in [-1, 1], or None when it carries none."""
    value, kind = event.get("value"), event.get("kind")
    if value is None or kind not in KINDS:
        return None
    if kind == "rating":
        return (float(value) - 3.0) / 2.0  # 1..5 → -1..1, centred on the scale's midpoint
    return float(np.sign(value))


def _user_order(users: list[dict], events: list[dict]) -> tuple[list[str], list[dict]]:
    """Store users first (their order), then users seen only in events (sorted)."""
    ids = [str(u["user_id"]) for u in users]
    profiles = [dict(u.get("profile") or {}) for u in users]
    known = set(ids)
    extra = sorted({str(e["user_id"]) for e in events} - known)
    return ids + extra, profiles + [{} for _ in extra]


def user_table_from_events(
    users: list[dict],
    events: Iterable[dict],
    behaviour: BehaviourMode = "features",
    stats: dict | None = None,
    alpha: float = 5.0,
    embed: bool = False,
) -> UserTable:
    """A UserTable from user records (``{"user_id", "profile"}``) and feedback event dicts.

    ``stats`` (a table's ``behaviour_stats``, e.g. a fitted segmenter's) puts reply features on
    the scale the segmenter was fitted with; by default they are computed from these events.
    ``embed`` measures MiniLM relevance (slow; it rarely separates kinds of users).
    """
    events = [e for e in events if _signal(e) is not None]
    ids, profiles = _user_order(users, events)
    if behaviour == "items":
        return _items_table(ids, profiles, events)
    if behaviour != "features":
        raise UserError(f"segmentation.behaviour: unknown mode {behaviour!r} (features | items)")
    return _features_table(ids, profiles, events, stats, alpha, embed)


def _features_table(ids, profiles, events, stats, alpha, embed) -> UserTable:
    from rlhf_persona.simulation.features import FEATURE_NAMES, reply_features

    names = list(FEATURE_NAMES)
    events = [e for e in events if e["kind"] != "pairwise" or e.get("other_reply")]
    index = {u: i for i, u in enumerate(ids)}
    n_feedback = np.zeros(len(ids), dtype=np.int64)
    if not events:
        return UserTable(ids, profiles, np.zeros((len(ids), len(names))), n_feedback, names)
    user_idx = np.array([index[str(e["user_id"])] for e in events], dtype=np.int64)
    interests = [_interests(profiles[i]) for i in user_idx]
    prompts = [e.get("prompt") or "" for e in events]
    feats = reply_features(prompts, [e["reply"] for e in events], interests, embed=embed)
    pair = np.array([e["kind"] == "pairwise" for e in events])
    other = np.zeros_like(feats)
    if pair.any():
        rows = np.flatnonzero(pair)
        other[rows] = reply_features(
            [prompts[r] for r in rows],
            [events[r]["other_reply"] for r in rows],
            [interests[r] for r in rows],
            embed=embed,
        )
    stats = stats or feature_stats(np.vstack([feats, other[pair]]))
    y = np.array([_signal(e) for e in events])
    weights = preference_directions(user_idx, feats, other, pair, y, len(ids), stats, alpha)
    n_feedback = np.bincount(user_idx, minlength=len(ids))
    return UserTable(ids, profiles, weights, n_feedback, names, "features", stats)


def _interests(profile: dict) -> list[str] | None:
    value = profile.get("interests")
    return [str(v) for v in value] if isinstance(value, list | tuple) else None


def _items_table(ids, profiles, events) -> UserTable:
    index = {u: i for i, u in enumerate(ids)}
    items: dict[str, int] = {}
    labels: dict[str, str] = {}
    user_idx, item_idx, values = [], [], []
    for e in events:
        if e["kind"] == "pairwise":
            continue  # a choice between two items is no vote on either
        # The store's reply id names an item; plain event dicts fall back to the text.
        key = str(e.get("reply_id") or e["reply"])
        labels.setdefault(key, str(e.get("reply") or key))
        user_idx.append(index[str(e["user_id"])])
        item_idx.append(items.setdefault(key, len(items)))
        values.append(_signal(e))
    u, it = np.array(user_idx, dtype=np.int64), np.array(item_idx, dtype=np.int64)
    votes = vote_matrix(u, it, np.array(values, dtype=np.float64), len(ids), len(items))
    n_feedback = np.bincount(u, minlength=len(ids)) if len(u) else np.zeros(len(ids), np.int64)
    return UserTable(ids, profiles, votes, n_feedback, list(items), "items", item_labels=labels)


def user_table_from_store(
    store,
    behaviour: BehaviourMode = "features",
    stats: dict | None = None,
    alpha: float = 5.0,
    embed: bool = False,
    user_ids: list[str] | None = None,
) -> UserTable:
    """Read users and their events from a ``FeedbackStore`` (optionally only ``user_ids``)."""
    users, events = store.users(), store.events()
    if user_ids is not None:
        wanted = set(user_ids)
        missing = wanted - {u["user_id"] for u in users} - {e["user_id"] for e in events}
        if missing:
            raise UserError(f"unknown user id(s) in the store: {', '.join(sorted(missing)[:5])}")
        users = [u for u in users if u["user_id"] in wanted]
        events = [e for e in events if e["user_id"] in wanted]
    return user_table_from_events(users, events, behaviour, stats, alpha, embed)


def segmenter_from_config(cfg: Any, seed: int = 0):
    """A :class:`Segmenter` with the parameters of a ``SegmentationConfig``."""
    from rlhf_persona.segmentation.segmenter import Segmenter

    return Segmenter(
        k=cfg.k,
        k_range=tuple(cfg.k_range),
        features=cfg.features,
        min_segment_size=cfg.min_segment_size,
        profile_weight=cfg.profile_weight,
        behaviour_weight=cfg.behaviour_weight,
        behaviour_components=cfg.behaviour_components,
        min_feedback=cfg.min_feedback,
        random_state=seed,
    )


def fit_from_store(
    store,
    cfg: Any,
    run_id: str,
    previous_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
):
    """Fit a segmenter on everything in ``store`` and write each user's segment to it.

    ``cfg`` is a ``SegmentationConfig``; with ``previous_dir`` (a saved segmenter) the segment
    ids of the previous round are kept; ``out_dir`` saves the fitted segmenter. Bad input (too
    few users for k, no usable features) raises UserError before anything is written.
    """
    from rlhf_persona.segmentation.segmenter import Segmenter

    previous = Segmenter.load(previous_dir) if previous_dir is not None else None
    table = user_table_from_store(
        store, cfg.behaviour, alpha=cfg.ridge_alpha, embed=cfg.embed_relevance
    )
    segmenter = segmenter_from_config(cfg, seed).fit(table, previous=previous)
    segments, confidence = segmenter.assign(table)
    rows = [
        (uid, int(s), float(c))
        for uid, s, c in zip(table.user_ids, segments, confidence, strict=True)
    ]
    if out_dir is not None:
        segmenter.save(out_dir)
    store.write_segments(run_id, rows)
    return segmenter
