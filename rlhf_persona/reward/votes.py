"""Pointwise vote data for the personalization levels: one row per (user, item, ±1) label.

    votes = votes_from_store(store)               # thumbs ±1 and ratings above / below the midpoint
    train, test = split_votes(votes, "item", 0.25, seed=0)
    check_memory(votes, max_gb=4.0)               # a clear error with advice, never a MemoryError

Every level and baseline trains on these rows (or on per-item / per-cell counts of them), never on
the dense users' agree × disagree pairs: 225k Polis-style votes make 5.2M within-user pairs, but
the rows stay 225k. Within-user pairwise accuracy is computed per user from ranks (``metrics``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from rlhf_persona.errors import UserError

LABEL_KINDS = ("thumbs", "rating")
SPLITS = ("item", "user", "new_item")


@dataclass
class VoteData:
    """Votes as parallel arrays over shared user / item index spaces (``subset`` keeps them)."""

    user: np.ndarray  # int64 index into user_ids
    item: np.ndarray  # int64 index into items
    y: np.ndarray  # float64, +1 agree / thumbs up / rating above the midpoint, −1 the opposite
    user_ids: list[str]
    items: list[str]  # the reply (statement) text of each item
    prompts: list[str]  # the prompt each item answered
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def subset(self, mask: np.ndarray) -> VoteData:
        return VoteData(self.user[mask], self.item[mask], self.y[mask], self.user_ids,
                        self.items, self.prompts, dict(self.report))  # fmt: skip

    def events(self) -> list[dict]:
        """The rows as thumbs event dicts (for the segmentation's ``features`` behaviour)."""
        return [
            {"user_id": self.user_ids[u], "kind": "thumbs", "prompt": self.prompts[i],
             "reply": self.items[i], "value": int(y)}
            for u, i, y in zip(self.user.tolist(), self.item.tolist(), self.y.tolist(), strict=True)
        ]  # fmt: skip


def label_of(event: dict) -> float:
    """±1 for a thumbs / rating event, 0 when it carries no direction (pass, midpoint rating)."""
    value = event.get("value")
    if value is None:
        return 0.0
    if event["kind"] == "rating":
        return float(np.sign(float(value) - 3.0))  # 1..5, as segmentation's _signal centres it
    return float(np.sign(float(value)))


def votes_from_events(events, user_ids: list[str] | None = None) -> VoteData:
    """VoteData from event dicts (``user_id``, ``kind``, ``prompt``, ``reply``, ``value``);
    A/B choices and directionless labels are counted in ``report["skipped"]``."""
    users: dict[str, int] = {u: i for i, u in enumerate(user_ids or [])}
    items: dict[tuple[str, str], int] = {}
    u_idx, i_idx, ys = [], [], []
    skipped: Counter = Counter()
    for e in events:
        if e.get("kind") not in LABEL_KINDS or not e.get("reply"):
            skipped[f"{e.get('kind')} event (not a single-reply label)"] += 1
            continue
        y = label_of(e)
        if y == 0:
            skipped["pass / midpoint label (no direction)"] += 1
            continue
        u_idx.append(users.setdefault(str(e["user_id"]), len(users)))
        i_idx.append(items.setdefault((e.get("prompt") or "", e["reply"]), len(items)))
        ys.append(y)
    keys = list(items)
    return VoteData(np.array(u_idx, dtype=np.int64), np.array(i_idx, dtype=np.int64),
                    np.array(ys, dtype=np.float64), list(users), [r for _, r in keys],
                    [p for p, _ in keys], {"skipped": dict(skipped)})  # fmt: skip


def votes_from_store(store) -> VoteData:
    """Current thumbs and ratings of live users who consented (as the preference export
    uses them); other users' labels and A/B choices are counted in ``report["skipped"]``."""
    rows = store.feedback_rows(LABEL_KINDS + ("pairwise",))
    pairwise = sum(1 for r in rows if r.kind == "pairwise")
    no_consent = sum(1 for r in rows if r.kind != "pairwise" and not r.consent)
    events = ({"user_id": r.user_id, "kind": r.kind, "prompt": r.prompt, "reply": r.reply,
               "value": r.value} for r in rows if r.kind != "pairwise" and r.consent)  # fmt: skip
    votes = votes_from_events(events, [str(u["user_id"]) for u in store.users()])
    for what, count in (("pairwise event (a choice, not a label)", pairwise),
                        ("label of a user without consent", no_consent)):  # fmt: skip
        if count:
            votes.report["skipped"][what] = count
    votes.report["pairwise_events"] = pairwise
    return votes


# --- splits ------------------------------------------------------------------------------------


def split_votes(votes: VoteData, how: str, share: float, seed: int) -> np.ndarray:
    """Boolean test mask: ``item`` — a share of each user's own votes; ``user`` — a share of the
    users, each keeping half of their votes as training shots; ``new_item`` — a share of the
    items, held out for everyone (only their text is known)."""
    if not 0 < share < 1:
        raise UserError(f"test share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    n = len(votes)
    if how == "item":
        return rng.random(n) < share
    if how == "user":
        held = rng.random(votes.n_users) < share
        return held[votes.user] & (rng.random(n) < 0.5)
    if how == "new_item":
        return (rng.random(votes.n_items) < share)[votes.item]
    raise UserError(f"split {how!r}: expected one of {', '.join(SPLITS)}")


def sample_users(votes: VoteData, max_votes: int, seed: int) -> tuple[VoteData, str | None]:
    """Whole users drawn at random until ``max_votes`` votes (a user's votes stay together)."""
    if len(votes) <= max_votes:
        return votes, None
    per_user = np.bincount(votes.user, minlength=votes.n_users)
    order = np.random.default_rng(seed).permutation(votes.n_users)
    keep_users = order[np.cumsum(per_user[order]) <= max_votes]
    mask = np.isin(votes.user, keep_users)
    note = (f"sampled {len(keep_users)} of {votes.n_users} users ({int(mask.sum())} of "
            f"{len(votes)} votes) to stay under max_votes={max_votes}")  # fmt: skip
    return votes.subset(mask), note


# --- memory ------------------------------------------------------------------------------------


def estimate_bytes(n_votes: int, n_users: int, n_items: int, items_mode: bool) -> int:
    """Peak working memory of an evaluation: per-vote arrays (indices, offsets, scores of every
    model, Newton terms), the dense users × items vote table of item-mode segmentation and the
    Polis-style PCA baseline (float64 while built), kNN similarity chunks and the embeddings."""
    per_vote = 80 * 8  # ~80 float64 / int64 columns alive at once across models and metrics
    dense = n_users * n_items * 8 * 3 if items_mode else n_users * 64 * 8
    knn = 512 * n_users * 8 * 2
    embed = n_items * 384 * 8 * 4
    # + libraries and the MiniLM encoder; calibrated on bench_personal: 225k votes peak 823 MB
    # (estimate 804 MB), 1M votes of 8,889 users peak 1,458 MB (estimate 1,473 MB)
    return n_votes * per_vote + dense + knn + embed + 600 * 2**20


def check_memory(votes: VoteData, max_gb: float, items_mode: bool) -> int:
    """Raise a ``UserError`` with advice when the estimate exceeds ``max_gb``; else the bytes."""
    need = estimate_bytes(len(votes), votes.n_users, votes.n_items, items_mode)
    if need > max_gb * 2**30:
        raise UserError(
            f"reward personal: {len(votes)} votes of {votes.n_users} users on {votes.n_items} "
            f"items need ~{need / 2**30:.1f} GiB (limit reward.personal_max_gb={max_gb}). "
            "Sample whole users with --max-votes N (e.g. --max-votes "
            f"{_votes_within(votes, max_gb, items_mode)}), raise the limit with "
            "--set reward.personal_max_gb=G if the machine has the memory, or segment on reply "
            "features (--set segmentation.behaviour=features) instead of a users × items table."
        )
    return need


def _votes_within(votes: VoteData, max_gb: float, items_mode: bool) -> int:
    scale = 1.0
    for _ in range(40):
        scale *= 0.8
        need = estimate_bytes(int(len(votes) * scale), int(votes.n_users * scale), votes.n_items,
                              items_mode)  # fmt: skip
        if need <= max_gb * 2**30:
            break
    return max(1, int(len(votes) * scale))


# --- synthetic ---------------------------------------------------------------------------------


def synthetic_votes(n_users: int = 2000, n_items: int = 900, n_votes: int = 225_000,
                    rank: int = 4, segments: int = 4, dims: int = 32,
                    seed: int = 0) -> tuple[VoteData, np.ndarray]:  # fmt: skip
    """A vote matrix with planted low-rank user structure, and its items' "text" features.

    ``logit(u, i) = a_i + b_u + p_u · q_i`` with ``p_u`` = its segment's centre + individual
    noise (so segments, then users, carry signal), ``q_i`` item factors and ``a_i`` popularity;
    the item features are a noisy random rotation of ``(a_i, q_i)`` (text that partly tells the
    item's factors). Users vote on random subsets of varied size (``n_votes`` in all).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (segments, rank))
    seg = rng.integers(segments, size=n_users)
    p = centres[seg] + rng.normal(0, 0.6, (n_users, rank))
    b = rng.normal(0, 0.5, n_users)
    q = rng.normal(0, 1.0, (n_items, rank))
    a = rng.normal(0, 0.8, n_items)
    item_x = np.hstack([a[:, None], q]) @ rng.normal(0, 1, (rank + 1, dims))
    item_x += rng.normal(0, 1.0, item_x.shape)
    per_user = rng.lognormal(0, 0.6, n_users)
    per_user = np.minimum(np.maximum(5, per_user / per_user.sum() * n_votes), n_items).astype(int)
    user = np.repeat(np.arange(n_users), per_user)
    item = np.concatenate([rng.choice(n_items, k, replace=False) for k in per_user])
    logit = a[item] + b[user] + np.einsum("ij,ij->i", p[user], q[item])
    y = np.where(rng.random(len(user)) < 1 / (1 + np.exp(-logit)), 1.0, -1.0)
    votes = VoteData(user.astype(np.int64), item.astype(np.int64), y,
                     [f"u{i}" for i in range(n_users)], [f"statement {i}" for i in range(n_items)],
                     ["synthetic"] * n_items, {"planted_segments": seg.tolist()})  # fmt: skip
    return votes, item_x
