"""Export the store's current feedback as Hugging Face ``datasets`` in TRL's formats.

- ``export_preference`` -> prompt, chosen, rejected, margin, user_id, segment_id (DPO, reward
  models). Pairs come from pairwise choices (margin 1), from two ratings of the same user on
  replies to the same prompt (margin = the rating gap; equal ratings give no pair) and from the
  same user's thumbs up and thumbs down on replies to the same prompt (margin 1). With
  ``across_prompts=True`` (reward-model training, not DPO) also from one user's liked reply
  (thumbs up, rating ≥ 4) against their disliked reply (thumbs down, rating ≤ 2) to *another*
  prompt, with an extra ``rejected_prompt`` column: most thumbs have no partner on their own
  prompt, and the same user's two judgements share that user's threshold, so they compare.
- ``export_kto`` -> prompt, completion, label (bool), user_id, segment_id (KTO), from thumbs
  (and with ``ratings=True`` from ratings: ≥ 4 desirable, ≤ 2 undesirable).
- ``export_ratings`` -> prompt, completion, rating (1..5), user_id, segment_id.

Every row keeps the user and their segment (current assignment, or the ``segments`` given;
-1 when none). Only live users who consented are used (deleted users' feedback is gone from the
store already). Rows are deduplicated; a pair the same user also gave the other way round
(e.g. a thumbs pair against a pairwise choice) is contradictory and dropped. Each function also
returns a report: how many rows, from which source, and what was dropped and why.

Pass ``conversational=True`` for TRL's conversational format (lists of chat messages), and
``since`` (a datetime) to keep only votes given from then on (a window over recent tastes; older
ones are reported as dropped ``before_since``).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import datetime
from itertools import combinations
from typing import TYPE_CHECKING, Any

from rlhf_persona.feedback.tables import as_utc

if TYPE_CHECKING:
    from datasets import Dataset

    from rlhf_persona.feedback.store import FeedbackStore

FORMATS = ("preference", "kto", "ratings")
NO_SEGMENT = -1
RATINGS_COLUMNS = ("prompt", "completion", "rating", "user_id", "segment_id")
KTO_COLUMNS = ("prompt", "completion", "label", "user_id", "segment_id")
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "margin", "user_id", "segment_id")
MAX_CROSS_PAIRS_PER_USER = 64  # a sample of each user's liked x disliked pairs beyond this


def _segments_of(store: FeedbackStore, segments: Mapping[str, int] | None) -> Mapping[str, int]:
    return store.current_segments() if segments is None else segments


def _usable(rows: list[Any], dropped: Counter, since: datetime | None = None) -> list[Any]:
    since = as_utc(since) if since is not None else None
    kept = []
    for row in rows:
        if not row.consent:
            dropped["no_consent"] += 1
        elif since is not None and as_utc(row.created_at) < since:
            dropped["before_since"] += 1
        else:
            kept.append(row)
    return kept


def _as_chat(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def _dataset(columns: dict[str, list], features: dict[str, str], conversational: bool) -> Dataset:
    from datasets import Dataset, Features, Value

    feats: dict[str, Any] = {}
    for name, dtype in features.items():
        if conversational and dtype == "text":
            feats[name] = [{"role": Value("string"), "content": Value("string")}]
        else:
            feats[name] = Value("string" if dtype == "text" else dtype)
    return Dataset.from_dict(columns, features=Features(feats))


def _report(fmt: str, rows: int, used: Counter, dropped: Counter) -> dict[str, Any]:
    return {"format": fmt, "rows": rows, "used": dict(used), "dropped": dict(dropped)}


def export_preference(
    store: FeedbackStore,
    segments: Mapping[str, int] | None = None,
    *,
    conversational: bool = False,
    across_prompts: bool = False,
    since: datetime | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """Preference pairs (see the module docstring) and a report of what was used and dropped."""
    seg = _segments_of(store, segments)
    dropped: Counter = Counter()
    rows = _usable(store.feedback_rows(["pairwise", "rating", "thumbs"]), dropped, since)
    # (user, prompt, chosen, rejected) -> (margin, source, rejected's prompt); first source wins.
    pairs: dict[tuple[str, str, str, str], tuple[float, str, str]] = {}

    def add(user: str, prompt: str, chosen: str, rejected: str, margin: float, source: str,
            rejected_prompt: str | None = None):  # fmt: skip
        key = (user, prompt, chosen, rejected)
        if key in pairs:
            dropped["duplicate_pair"] += 1
        else:
            pairs[key] = (margin, source, prompt if rejected_prompt is None else rejected_prompt)

    by_group: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for row in rows:
        if row.kind == "pairwise":
            first, second = (row.reply, row.other_reply)
            chosen, rejected = (first, second) if row.value > 0 else (second, first)
            add(row.user_id, row.prompt, chosen, rejected, 1.0, "pairwise")
        else:
            by_group[(row.kind, row.user_id, row.prompt_hash)].append(row)

    for (kind, user, _), group in sorted(by_group.items()):
        if kind == "rating":
            _rating_pairs(group, user, add, dropped)
        else:
            _thumb_pairs(group, user, add, dropped)
    if across_prompts:
        _cross_prompt_pairs(rows, add)

    used: Counter = Counter()
    names = PREFERENCE_COLUMNS + (("rejected_prompt",) if across_prompts else ())
    columns: dict[str, list] = {k: [] for k in names}
    for (user, prompt, chosen, rejected), (margin, source, rejected_prompt) in pairs.items():
        if (user, prompt, rejected, chosen) in pairs:
            dropped["contradictory_pair"] += 1
            continue
        used[source] += 1
        columns["prompt"].append(_as_chat("user", prompt) if conversational else prompt)
        columns["chosen"].append(_as_chat("assistant", chosen) if conversational else chosen)
        columns["rejected"].append(_as_chat("assistant", rejected) if conversational else rejected)
        columns["margin"].append(margin)
        columns["user_id"].append(user)
        columns["segment_id"].append(int(seg.get(user, NO_SEGMENT)))
        if across_prompts:
            rp = rejected_prompt
            columns["rejected_prompt"].append(_as_chat("user", rp) if conversational else rp)
    features = {"prompt": "text", "chosen": "text", "rejected": "text", "margin": "float32",
                "user_id": "string", "segment_id": "int32"}  # fmt: skip
    if across_prompts:
        features["rejected_prompt"] = "text"
    dataset = _dataset(columns, features, conversational)
    return dataset, _report("preference", len(dataset), used, dropped)


def _rating_pairs(group: list[Any], user: str, add, dropped: Counter) -> None:
    """Pairs from one user's ratings of replies to one prompt: margin = rating gap."""
    if len(group) < 2:
        dropped["rating_without_other_reply"] += len(group)
        return
    for a, b in combinations(group, 2):
        if a.value == b.value:
            dropped["rating_tie"] += 1
            continue
        hi, lo = (a, b) if a.value > b.value else (b, a)
        add(user, hi.prompt, hi.reply, lo.reply, float(hi.value - lo.value), "rating_gap")


def _thumb_pairs(group: list[Any], user: str, add, dropped: Counter) -> None:
    """Pairs from one user's thumbs up and thumbs down on replies to one prompt."""
    ups = [row for row in group if row.value > 0]
    downs = [row for row in group if row.value < 0]
    cleared = sum(1 for row in group if row.value == 0)
    if cleared:
        dropped["cleared_thumb"] += cleared
    if not ups or not downs:
        dropped["thumb_without_opposite"] += len(ups) + len(downs)
        return
    for up in ups:
        for down in downs:
            add(user, up.prompt, up.reply, down.reply, 1.0, "thumbs_up_vs_down")


def _cross_prompt_pairs(rows: list[Any], add) -> None:
    """Each user's liked replies against their disliked replies to other prompts (margin 1);
    beyond ``MAX_CROSS_PAIRS_PER_USER`` a seeded sample, so heavy raters do not dominate."""
    liked: dict[str, list[Any]] = defaultdict(list)
    disliked: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        label = _kto_label(row)[0] if row.kind in ("thumbs", "rating") else None
        if label is not None:  # liked / disliked as KTO reads them: thumbs, ratings ≥ 4 / ≤ 2
            (liked if label else disliked)[row.user_id].append(row)
    for user in sorted(liked.keys() & disliked.keys()):
        ups, downs = liked[user], disliked[user]
        both = [(u, d) for u in ups for d in downs if u.prompt_hash != d.prompt_hash]
        if len(both) > MAX_CROSS_PAIRS_PER_USER:
            both = random.Random(user).sample(both, MAX_CROSS_PAIRS_PER_USER)
        for up, down in both:
            add(user, up.prompt, up.reply, down.reply, 1.0, "across_prompts", down.prompt)


def export_kto(
    store: FeedbackStore,
    segments: Mapping[str, int] | None = None,
    *,
    conversational: bool = False,
    ratings: bool = False,
    pairwise: bool = False,
    since: datetime | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """KTO rows from thumbs: label True for up, False for down (cleared thumbs are dropped).
    With ``ratings=True`` ratings count too: ≥ 4 desirable, ≤ 2 undesirable, 3 dropped. With
    ``pairwise=True`` an A/B choice gives its chosen reply as desirable and the other as
    undesirable (TRL's ``unpair_preference_dataset`` reading); a reply the user also thumbed
    or rated keeps that absolute label."""
    seg = _segments_of(store, segments)
    dropped: Counter = Counter()
    kinds = ["thumbs", "rating"] if ratings else ["thumbs"]
    rows = _usable(store.feedback_rows(kinds + (["pairwise"] if pairwise else [])), dropped, since)
    rows.sort(key=lambda row: row.kind == "pairwise")  # absolute labels first (stable sort)
    seen: set[tuple[str, str, str]] = set()
    used: Counter = Counter()
    columns: dict[str, list] = {k: [] for k in KTO_COLUMNS}
    for row in rows:
        labelled, drop = _kto_labels(row)
        if drop:
            dropped[drop] += 1
        for reply, label, source in labelled:
            key = (row.user_id, row.prompt, reply)
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            used[source] += 1
            columns["prompt"].append(_as_chat("user", row.prompt) if conversational else row.prompt)
            columns["completion"].append(_as_chat("assistant", reply) if conversational else reply)
            columns["label"].append(label)
            columns["user_id"].append(row.user_id)
            columns["segment_id"].append(int(seg.get(row.user_id, NO_SEGMENT)))
    features = {"prompt": "text", "completion": "text", "label": "bool", "user_id": "string",
                "segment_id": "int32"}  # fmt: skip
    dataset = _dataset(columns, features, conversational)
    return dataset, _report("kto", len(dataset), used, dropped)


def _kto_labels(row: Any) -> tuple[list[tuple[str, bool, str]], str]:
    """([(reply, label, source), ...], why dropped) of a thumbs, rating or pairwise row."""
    if row.kind == "pairwise":
        if row.value == 0:
            return [], "pairwise_tie"
        chosen, rejected = (row.reply, row.other_reply) if row.value > 0 else (
            row.other_reply, row.reply)  # fmt: skip
        return [(chosen, True, "pairwise_chosen"), (rejected, False, "pairwise_rejected")], ""
    label, source, drop = _kto_label(row)
    return ([] if label is None else [(row.reply, label, source)]), drop


def _kto_label(row: Any) -> tuple[bool | None, str, str]:
    """(label, source, why dropped) of a thumbs or rating row."""
    if row.kind == "rating":
        if row.value == 3:
            return None, "", "rating_neutral"
        return row.value >= 4, "rating_high" if row.value >= 4 else "rating_low", ""
    if row.value == 0:
        return None, "", "cleared_thumb"
    return row.value > 0, "thumbs_up" if row.value > 0 else "thumbs_down", ""


def export_ratings(
    store: FeedbackStore,
    segments: Mapping[str, int] | None = None,
    *,
    conversational: bool = False,
    since: datetime | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """One row per current rating: prompt, completion, rating (1..5), user_id, segment_id."""
    seg = _segments_of(store, segments)
    dropped: Counter = Counter()
    rows = _usable(store.feedback_rows(["rating"]), dropped, since)
    seen: set[tuple[str, str, str]] = set()
    columns: dict[str, list] = {k: [] for k in RATINGS_COLUMNS}
    for row in rows:
        key = (row.user_id, row.prompt, row.reply)
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        columns["prompt"].append(_as_chat("user", row.prompt) if conversational else row.prompt)
        columns["completion"].append(
            _as_chat("assistant", row.reply) if conversational else row.reply
        )
        columns["rating"].append(int(row.value))
        columns["user_id"].append(row.user_id)
        columns["segment_id"].append(int(seg.get(row.user_id, NO_SEGMENT)))
    features = {"prompt": "text", "completion": "text", "rating": "int32", "user_id": "string",
                "segment_id": "int32"}  # fmt: skip
    dataset = _dataset(columns, features, conversational)
    return dataset, _report("ratings", len(dataset), Counter(rating=len(dataset)), dropped)


EXPORTERS = {"preference": export_preference, "kto": export_kto, "ratings": export_ratings}


def export(
    store: FeedbackStore, fmt: str, segments: Mapping[str, int] | None = None, **kwargs: Any
) -> tuple[Dataset, dict[str, Any]]:
    """Dispatch on ``fmt`` (preference, kto or ratings)."""
    from rlhf_persona.feedback.errors import InvalidInput

    if fmt not in EXPORTERS:
        raise InvalidInput(f"must be one of {', '.join(FORMATS)}, not {fmt!r}", "format")
    return EXPORTERS[fmt](store, segments, **kwargs)
