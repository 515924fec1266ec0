"""Segment cards: who is in a segment and what its users reward, as data and as persona text.

Built only from what the store knows — profiles and the behaviour estimated from the users' own
feedback (:class:`UserTable`) — never from a simulator's hidden truth. The ``persona_text`` is
what the ``prefix`` reward model and the ``prompt`` policy strategy condition on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from rlhf_persona.segmentation.features import MISSING, UserTable, infer_profile_schema

# Reply feature → (phrase when rewarded high, phrase when rewarded low). Unknown features fall
# back to "high NAME" / "low NAME".
TRAIT_PHRASES: dict[str, tuple[str, str]] = {
    "length": ("long", "short"),
    "emoji": ("with emoji", "without emoji"),
    "formality": ("formal", "casual"),
    "enthusiasm": ("enthusiastic", "calm"),
    "structure": ("structured (bullet lists)", "plain-prose"),
    "question": ("ending with a follow-up question", "without follow-up questions"),
    "detail": ("detailed", "generic"),
    "relevance": ("on-topic", "loosely related"),
    "interest_match": ("about their interests", "away from their interests"),
}
# Phrases that read after the noun ("replies with emoji"), not before it.
_POSTFIX = ("with ", "without ", "ending ", "about ", "away ")

MIN_SHARE_IN = 0.25  # an attribute value must cover this share of the segment …
MIN_LIFT = 1.25  # … and be this many times more common than overall to be listed
MIN_NUMERIC_Z = 0.5  # numeric attributes: segment mean this many SDs from the overall mean
TOP_ATTRIBUTES = 4
TOP_TRAITS = 3
TEXT_TRAITS = 3
TRAIT_RELATIVE = 0.3  # traits listed only if |weight| ≥ this share of the segment's largest


@dataclass
class SegmentCard:
    """One segment: size, share, over-represented attributes, rewarded traits, persona text."""

    segment_id: int
    size: int
    share: float
    attributes: list[dict] = field(default_factory=list)
    rewards: list[dict] = field(default_factory=list)
    dislikes: list[dict] = field(default_factory=list)
    n_with_feedback: int = 0
    persona_text: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegmentCard:
        return cls(**data)


def build_cards(
    table: UserTable, segments: np.ndarray, counts: dict[int, int] | None = None
) -> list[SegmentCard]:
    """One card per segment id in ``segments`` (the segment of each user of ``table``).

    ``counts`` (segment id → users) gives sizes and shares when ``table`` is a sample.
    """
    columns = profile_columns(table.profiles, infer_profile_schema(table.profiles))
    if counts is None:
        counts = {int(s): int((segments == s).sum()) for s in np.unique(segments)}
    total = sum(counts.values())
    cards = []
    for seg in sorted(counts):
        members = segments == seg
        card = SegmentCard(
            segment_id=int(seg),
            size=int(counts[seg]),
            share=round(counts[seg] / total, 4),
            attributes=profile_lifts(columns, members),
            n_with_feedback=int((table.n_feedback[members] > 0).sum()),
        )
        if table.behaviour_mode == "items":
            card.rewards, card.dislikes = item_stances(table, members)
        else:
            card.rewards, card.dislikes = rewarded_traits(table, members)
        card.persona_text = persona_text(card, table.behaviour_mode)
        cards.append(card)
    return cards


def profile_columns(profiles: list[dict], schema: dict[str, str]) -> dict[str, tuple]:
    """Per attribute: ``("numeric", values)`` with NaN for missing, or ``(kind, rows, codes,
    names)``: one entry per (user row, value) pair — a list attribute gives several."""
    out: dict[str, tuple] = {}
    for key, kind in schema.items():
        values = [(p or {}).get(key) for p in profiles]
        if kind == "numeric":
            x = [float(v) if isinstance(v, int | float) else np.nan for v in values]
            out[key] = ("numeric", np.array(x, dtype=np.float64))
            continue
        as_lists = pd.Series(
            [v if isinstance(v, list | tuple | set) else ([] if v is None else [v]) for v in values]
        )
        flat = as_lists.explode().dropna().astype(str)
        codes, names = pd.factorize(flat)
        out[key] = (kind, flat.index.to_numpy(), codes, [str(n) for n in names])
    return out


def profile_lifts(columns: dict[str, tuple], members: np.ndarray) -> list[dict]:
    """Profile values over-represented among ``members``: share inside, overall, and lift."""
    n_in, n_all = int(members.sum()), len(members)
    if n_in == 0:
        return []
    found = []
    for key, column in columns.items():
        if column[0] == "numeric":
            found.extend(_numeric_shift(key, column[1], members))
            continue
        kind, rows, codes, names = column
        count_all = np.bincount(codes, minlength=len(names))
        count_in = np.bincount(codes[members[rows]], minlength=len(names))
        for j in np.flatnonzero(count_in):
            share_in, share_all = count_in[j] / n_in, count_all[j] / n_all
            lift = share_in / share_all
            if names[j] != MISSING and share_in >= MIN_SHARE_IN and lift >= MIN_LIFT:
                found.append(
                    {
                        "attribute": key,
                        "kind": kind,
                        "value": names[j],
                        "share_in_segment": round(float(share_in), 3),
                        "share_overall": round(float(share_all), 3),
                        "lift": round(float(lift), 3),
                    }
                )
    found.sort(key=lambda a: (-a["lift"], a["attribute"], str(a["value"])))
    return found[:TOP_ATTRIBUTES]


def _numeric_shift(key: str, x: np.ndarray, members: np.ndarray) -> list[dict]:
    ok = ~np.isnan(x)
    if ok.sum() < 2 or not (ok & members).any():
        return []
    mean_all, sd = float(x[ok].mean()), float(x[ok].std())
    mean_in = float(x[ok & members].mean())
    if sd <= 0 or abs(mean_in - mean_all) / sd < MIN_NUMERIC_Z:
        return []
    return [
        {
            "attribute": key,
            "kind": "numeric",
            "value": "high" if mean_in > mean_all else "low",
            "mean_in_segment": round(mean_in, 3),
            "mean_overall": round(mean_all, 3),
            # Lift for ordering beside categorical values: the shift in SDs, on a ratio scale.
            "lift": round(1.0 + abs(mean_in - mean_all) / sd, 3),
        }
    ]


def rewarded_traits(table: UserTable, members: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Reply features the members' feedback rewards (positive) and penalises (negative).

    The members' estimated preference weights (standardised reply features, from their own
    thumbs / ratings / choices) are averaged over members who gave feedback.
    """
    rated = members & (table.n_feedback > 0)
    if not rated.any() or not table.behaviour_names:
        return [], []
    mean = table.behaviour[rated].mean(axis=0)
    biggest = float(np.abs(mean).max())
    if biggest <= 0:
        return [], []
    order = np.argsort(-np.abs(mean))
    rewards, dislikes = [], []
    for j in order:
        w = float(mean[j])
        if abs(w) < TRAIT_RELATIVE * biggest:
            break
        entry = {"trait": table.behaviour_names[j], "weight": round(w, 4)}
        (rewards if w > 0 else dislikes).append(entry)
    return rewards[:TOP_TRAITS], dislikes[:TOP_TRAITS]


def item_stances(table: UserTable, members: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Items (statements) the members agree with / reject more than users overall do."""
    votes, voted = table.behaviour, table.behaviour != 0
    n_in = np.maximum(voted[members].sum(axis=0), 1)
    n_all = np.maximum(voted.sum(axis=0), 1)
    mean_in = votes[members].sum(axis=0) / n_in
    mean_all = votes.sum(axis=0) / n_all
    diff = np.where(voted[members].sum(axis=0) > 0, mean_in - mean_all, 0.0)
    out: tuple[list[dict], list[dict]] = ([], [])
    for sign, bucket in ((1, out[0]), (-1, out[1])):
        for j in np.argsort(-sign * diff)[:TOP_TRAITS]:
            if sign * diff[j] <= 0:
                break
            name = table.behaviour_names[j]
            bucket.append(
                {
                    "trait": name,
                    "text": _short(table.item_labels.get(name, name)),
                    "weight": round(float(mean_in[j]), 4),
                    "vs_overall": round(float(diff[j]), 4),
                }
            )
    return out


def _short(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def trait_phrase(trait: str, positive: bool) -> str:
    high, low = TRAIT_PHRASES.get(trait, (f"high {trait}", f"low {trait}"))
    return high if positive else low


def _replies(phrases: list[str], noun: str) -> str:
    pre = [p for p in phrases if not p.startswith(_POSTFIX)]
    post = [p for p in phrases if p.startswith(_POSTFIX)]
    return " ".join(x for x in (", ".join(pre), noun, " and ".join(post)) if x)


def persona_text(card: SegmentCard, mode: str = "features") -> str:
    """A short description, e.g. "Users here are mostly 18-24 (age_band), student (occupation);
    they reward short, casual replies with emoji and dislike long, formal ones.\""""
    who = [a for a in card.attributes if a["kind"] != "numeric"]
    mostly = [f"{a['value']} ({a['attribute']})" for a in who if a["share_in_segment"] >= 0.5]
    often = [f"{a['value']} ({a['attribute']})" for a in who if a["share_in_segment"] < 0.5]
    numeric = [f"{a['value']} {a['attribute']}" for a in card.attributes if a["kind"] == "numeric"]
    parts = []
    if mostly:
        parts.append("mostly " + ", ".join(mostly))
    if often:
        parts.append("often " + ", ".join(often))
    if numeric:
        parts.append("with " + ", ".join(numeric))
    text = f"Users here ({card.share:.0%} of users) are " + "; ".join(parts) if parts else ""
    text = text or f"Users here ({card.share:.0%} of users) share no distinctive profile"
    if mode == "items":
        agree = "; ".join(f'"{r["text"]}"' for r in card.rewards[:2])
        reject = "; ".join(f'"{r["text"]}"' for r in card.dislikes[:2])
        tail = [f"they agree more than others with {agree}" if agree else ""]
        tail.append(f"they reject {reject}" if reject else "")
        tail = [t for t in tail if t]
        return text + (". " + " and ".join(tail).capitalize() + "." if tail else ".")
    # The three strongest traits, liked or disliked: a persona should read in one breath.
    traits = sorted(card.rewards + card.dislikes, key=lambda t: -abs(t["weight"]))[:TEXT_TRAITS]
    if not traits:
        return text + "; their feedback shows no clear taste yet."
    liked = [trait_phrase(t["trait"], t["weight"] > 0) for t in traits]
    disliked = [trait_phrase(t["trait"], t["weight"] < 0) for t in traits]
    liked_text, disliked_text = _replies(liked, "replies"), _replies(disliked, "ones")
    return f"{text}; they reward {liked_text} and dislike {disliked_text}."
