"""Per-user residuals on any segment reward: r_user = r_segment + b_u + w_u · φ(prompt, reply).

    from rlhf_persona.reward.user_level import ReplyFeaturizer, UserLevelReward
    ul = UserLevelReward(base=rm, featurizer=ReplyFeaturizer("reply"), shrinkage=2.0).fit(export)
    ul.score(segment_ids, prompts, replies, user_ids=user_ids)   # unknown users: segment score
    ul.update_user("u7", new_pairs_of_u7)   # cheap: a few Newton steps, encoder untouched
    ul.remove_user("u7"); ul.sync_deleted(store)
    ul.save(folder); ul = UserLevelReward.load(folder)

``base`` is any segment-level reward with ``score(segment_ids, prompts, replies)`` (a TRL
``RewardModel`` of any strategy, a ``FeatureReward``, or None for a zero base). Each user's
residual ``θ_u = (b_u, w_u)`` (a bias and ``d`` weights on cheap features ``φ``) is the MAP fit
of the Bradley–Terry likelihood of *their own* pairs with the base score as a fixed offset,

    min_θ  Σ_pairs softplus(−(Δr_base + θ·Δx))  +  (λ/2) ‖θ‖²,      λ = reward.user_shrinkage,

solved by Newton's method (d + 1 ≤ ~33 unknowns: milliseconds). The Gaussian prior centred on
zero *is* the shrinkage toward the segment: a user with few labels keeps θ ≈ 0 (scored like the
segment), one with many moves toward their own taste. In a pair the bias cancels (Δx has no
constant column), so ``b_u`` is only learned from single-reply labels (``fit_rows``: thumbs).

Features ``φ`` (``ReplyFeaturizer``): ``"reply"`` — the observable reply features of
``simulation.features`` (length, emoji, formality, …: public functions of the text, not the
simulator's hidden truth); ``"embedding"`` — the MiniLM sentence embedding of the reply
projected on its first ``d`` principal components (fit on the training replies), cached by
text. Both are standardised on the training replies. ``"item_embedding"`` adds a one-hot of the
training replies' identity (Polis statements: the item's own popularity; unseen items: zeros).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlhf_persona.errors import UserError
from rlhf_persona.reward.data import PairData, pairs_from

USER_LEVEL_FILE = "user_level.json"
RESIDUALS_FILE = "user_residuals.npz"
FEATURE_KINDS = ("reply", "embedding", "item_embedding")
_EMBED_CACHE: dict[tuple[str, str], np.ndarray] = {}  # (encoder, text) -> unit vector


def embed_cached(texts: Sequence[str], encoder: str = "embedded:minilm", cache_dir=None):
    """MiniLM (or ``encoder``) sentence vectors of ``texts``; each distinct text is embedded
    once per process (Polis statements and served replies repeat across users)."""
    todo = sorted({t for t in texts if (encoder, t) not in _EMBED_CACHE})
    if todo:
        from rlhf_persona.models import load_encoder
        from rlhf_persona.models.embedding import embed_texts

        model, tok = _encoder(encoder, cache_dir, load_encoder)
        vecs = embed_texts(model, tok, todo).numpy()
        _EMBED_CACHE.update({(encoder, t): v for t, v in zip(todo, vecs, strict=True)})
    return np.stack([_EMBED_CACHE[(encoder, t)] for t in texts]) if texts else np.zeros((0, 1))


_ENCODERS: dict = {}


def _encoder(spec, cache_dir, load_encoder):
    if spec not in _ENCODERS:
        _ENCODERS[spec] = load_encoder(spec, cache_dir)
    return _ENCODERS[spec]


class ReplyFeaturizer:
    """φ(prompt, reply) ∈ R^d for the residuals (module docstring). ``fit`` learns the
    standardisation (and, for ``embedding``, the PCA projection) from training replies."""

    def __init__(self, kind: str = "reply", dims: int = 8, encoder: str = "embedded:minilm",
                 cache_dir=None):  # fmt: skip
        if kind not in FEATURE_KINDS:
            raise UserError(f"reward.user_features: {kind!r} is not one of {FEATURE_KINDS}")
        self.kind = kind
        self.dims = dims
        self.encoder = encoder
        self.cache_dir = cache_dir

    def _raw(self, prompts: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        if self.kind == "reply":
            from rlhf_persona.simulation.features import reply_features

            return reply_features(list(prompts), list(replies), None, embed=False).astype(float)
        return embed_cached(list(replies), self.encoder, self.cache_dir).astype(float)

    def fit(self, prompts: Sequence[str], replies: Sequence[str]) -> ReplyFeaturizer:
        uniq = dict.fromkeys(zip(prompts, replies, strict=True))  # each distinct reply once
        raw = self._raw([p for p, _ in uniq], [r for _, r in uniq])
        self.center_ = raw.mean(0)
        if self.kind != "reply":
            _, _, vt = np.linalg.svd(raw - self.center_, full_matrices=False)
            self.components_ = vt[: min(self.dims, len(vt))]
        else:
            self.components_ = np.eye(raw.shape[1])
        proj = (raw - self.center_) @ self.components_.T
        sd = proj.std(0)
        self.scale_ = np.where(sd > 1e-6, sd, np.inf)  # constant features → 0, not noise
        self.items_ = {r: i for i, r in enumerate(sorted({r for _, r in uniq}))}
        return self

    def transform(self, prompts: Sequence[str], replies: Sequence[str]) -> np.ndarray:
        if not hasattr(self, "center_"):
            raise UserError("ReplyFeaturizer is not fitted")
        x = ((self._raw(prompts, replies) - self.center_) @ self.components_.T) / self.scale_
        if self.kind != "item_embedding":
            return x
        onehot = np.zeros((len(replies), len(self.items_)))
        for row, reply in enumerate(replies):
            if reply in self.items_:
                onehot[row, self.items_[reply]] = 1.0
        return np.hstack([x, onehot])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "dims": self.dims, "encoder": self.encoder,
                "center": self.center_.tolist(), "components": self.components_.tolist(),
                "scale": [None if np.isinf(s) else s for s in self.scale_],
                "items": sorted(self.items_, key=self.items_.get)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict, cache_dir=None) -> ReplyFeaturizer:
        obj = cls(d["kind"], d["dims"], d["encoder"], cache_dir)
        obj.center_ = np.asarray(d["center"], dtype=float)
        obj.components_ = np.asarray(d["components"], dtype=float)
        obj.scale_ = np.array([np.inf if s is None else s for s in d["scale"]], dtype=float)
        obj.items_ = {r: i for i, r in enumerate(d.get("items", []))}
        return obj


def as_pairs(data) -> PairData:
    """``PairData`` from PairData itself or anything ``pairs_from`` accepts."""
    return data if isinstance(data, PairData) else pairs_from(data)


def pair_weight(pairs: PairData) -> float:
    """Likelihood weight of one user's pairs: ``min(1, distinct replies / pairs)``.

    Pairs built from thumbs (every up × every down, as Polis votes give) reuse each reply in
    many pairs; counting them as independent would overstate the evidence and defeat the
    shrinkage. Chat A/B pairs (two fresh replies each) keep weight 1.
    """
    distinct = len(set(pairs.chosen) | set(pairs.rejected))
    return min(1.0, distinct / max(1, len(pairs)))


def fit_logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray, lam: float,
                 theta0: np.ndarray | None = None, iters: int = 25,
                 weight: float = 1.0) -> np.ndarray:  # fmt: skip
    """MAP θ of ``P(y=+1) = σ(offset + θ·x)`` (each row's log-likelihood × ``weight``) under a
    N(0, 1/λ) prior, by Newton's method.

    ``y`` in {+1, −1}. The objective is strictly convex for λ > 0, so Newton converges in a few
    steps; a backtracking line search keeps each step a descent step.
    """
    d = x.shape[1]
    theta = np.zeros(d) if theta0 is None else theta0.astype(float).copy()
    if len(y) == 0:
        return theta
    lam = lam / weight  # weighting the likelihood = scaling the prior by 1 / weight

    def loss(t):
        return np.logaddexp(0.0, -y * (offset + x @ t)).sum() + 0.5 * lam * t @ t

    cur = loss(theta)
    for _ in range(iters):
        m = y * (offset + x @ theta)
        s = 0.5 * (1.0 - np.tanh(0.5 * m))  # σ(−m)
        grad = -(x.T @ (y * s)) + lam * theta
        hess = (x.T * (s * (1 - s))) @ x + lam * np.eye(d)
        step = np.linalg.solve(hess, grad)
        rate = 1.0
        while rate > 1e-4:
            cand = theta - rate * step
            new = loss(cand)
            if new <= cur:
                break
            rate *= 0.5
        if cur - new < 1e-9 * max(1.0, abs(cur)):
            theta, cur = cand, min(cur, new)
            break
        theta, cur = cand, new
    return theta


def _base_scores(base, segment_ids, prompts, replies) -> np.ndarray:
    if base is None:
        return np.zeros(len(prompts))
    return np.asarray(base.score(segment_ids, list(prompts), list(replies)), dtype=float)


class UserLevelReward:
    """A segment reward plus shrunk per-user residuals (module docstring).

    Args:
        base: segment-level reward (``score(segment_ids, prompts, replies)``), or None.
        featurizer: the residuals' features (``ReplyFeaturizer``); fitted in ``fit`` if needed.
        shrinkage: λ, the L2 pull of each residual toward zero (= the segment's score).
    """

    def __init__(self, base=None, featurizer: ReplyFeaturizer | None = None,
                 shrinkage: float = 2.0):  # fmt: skip
        if shrinkage <= 0:
            raise UserError(f"reward.user_shrinkage must be > 0, got {shrinkage}")
        self.base = base
        self.featurizer = featurizer or ReplyFeaturizer("reply")
        self.shrinkage = shrinkage
        self.residuals_: dict[str, np.ndarray] = {}
        self.n_labels_: dict[str, int] = {}

    # --- fitting ------------------------------------------------------------------------------

    def fit(self, data) -> UserLevelReward:
        """Fit every user's residual on their own pairs (the base stays as it is)."""
        pairs = as_pairs(data)
        if not hasattr(self.featurizer, "center_"):
            self.featurizer.fit(pairs.both_prompts(), pairs.chosen + pairs.rejected)
        offset, dx = self._pair_design(pairs)
        users = np.array([u or "" for u in pairs.user_ids])
        for uid in sorted(set(users.tolist()) - {""}):
            m = users == uid
            w = pair_weight(pairs.subset(np.flatnonzero(m)))
            self._set(uid, fit_logistic(dx[m], np.ones(m.sum()), offset[m], self.shrinkage,
                                        weight=w), int(m.sum()))  # fmt: skip
        return self

    def _pair_design(self, pairs: PairData) -> tuple[np.ndarray, np.ndarray]:
        """Base score margin and feature difference (bias column 0: it cancels) per pair."""
        n = len(pairs)
        segs = pairs.segment.tolist() * 2
        base = _base_scores(self.base, segs, pairs.both_prompts(), pairs.chosen + pairs.rejected)
        feats = self.featurizer.transform(pairs.both_prompts(), pairs.chosen + pairs.rejected)
        dx = np.hstack([np.zeros((n, 1)), feats[:n] - feats[n:]])
        return base[:n] - base[n:], dx

    def update_user(self, user_id: str, data) -> np.ndarray:
        """Refit one user's residual on ``data`` (all of *their* pairs so far: an export, a
        Dataset or row dicts; rows of other users are an error). No encoder training."""
        pairs = as_pairs(data)
        others = {u for u in pairs.user_ids if u not in (None, user_id)}
        if others:
            raise UserError(f"update_user({user_id!r}): pairs of other users {sorted(others)[:3]}")
        offset, dx = self._pair_design(pairs)
        theta = fit_logistic(dx, np.ones(len(pairs)), offset, self.shrinkage,
                             self.residuals_.get(user_id), weight=pair_weight(pairs))  # fmt: skip
        self._set(user_id, theta, len(pairs))
        return theta

    def fit_rows(self, user_id: str, segment_id, prompts, replies, labels) -> np.ndarray:
        """Refit one user's residual (bias included) on single-reply labels (thumbs ±1)."""
        y = np.where(np.asarray(labels, dtype=float) > 0, 1.0, -1.0)
        offset = _base_scores(self.base, [segment_id] * len(y), prompts, replies)
        x = np.hstack([np.ones((len(y), 1)), self.featurizer.transform(prompts, replies)])
        theta = fit_logistic(x, y, offset, self.shrinkage, self.residuals_.get(user_id))
        self._set(user_id, theta, len(y))
        return theta

    def _set(self, uid: str, theta: np.ndarray, n: int) -> None:
        self.residuals_[uid] = theta
        self.n_labels_[uid] = n

    def remove_user(self, user_id: str) -> bool:
        """Forget a user's residual (they are scored like their segment again)."""
        self.n_labels_.pop(user_id, None)
        return self.residuals_.pop(user_id, None) is not None

    def sync_deleted(self, store) -> list[str]:
        """Remove the residuals of users the feedback store has deleted; returns their ids."""
        gone = [u for u in sorted(self.residuals_) if store.is_deleted(user_id=u)]
        for uid in gone:
            self.remove_user(uid)
        return gone

    # --- scoring ------------------------------------------------------------------------------

    def residual(self, user_ids: Sequence, prompts, replies) -> np.ndarray:
        """b_u + w_u · φ per row; 0 for users without a residual (new users = their segment)."""
        n = len(prompts)
        if user_ids is None or not self.residuals_:
            return np.zeros(n)
        if isinstance(user_ids, str):
            user_ids = [user_ids] * n
        if len(user_ids) != n:
            raise UserError(f"score: {len(user_ids)} user ids for {n} rows")
        known = [i for i, u in enumerate(user_ids) if u in self.residuals_]
        out = np.zeros(n)
        if known:
            x = self.featurizer.transform([prompts[i] for i in known], [replies[i] for i in known])
            theta = np.stack([self.residuals_[user_ids[i]] for i in known])
            out[known] = theta[:, 0] + np.einsum("ij,ij->i", theta[:, 1:], x)
        return out

    def score(self, segment_ids, prompts: Sequence, replies: Sequence, user_ids=None) -> np.ndarray:
        """Segment score plus the user's residual (``user_ids`` None: the segment score)."""
        if len(prompts) != len(replies):
            raise UserError(f"score: {len(prompts)} prompts but {len(replies)} replies")
        if segment_ids is None or np.isscalar(segment_ids):
            segment_ids = [segment_ids] * len(prompts)
        base = _base_scores(self.base, list(segment_ids), prompts, replies)
        return base + self.residual(user_ids, list(prompts), list(replies))

    # --- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the residuals (npz) and featurizer (JSON); the base saves itself in
        ``directory`` when it has a ``save`` (a ``RewardModel`` does)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.base is not None and hasattr(self.base, "save"):
            self.base.save(out)
        ids = sorted(self.residuals_)
        theta = np.stack([self.residuals_[u] for u in ids]) if ids else np.zeros((0, 1))
        np.savez(out / RESIDUALS_FILE, theta=theta, n=np.array([self.n_labels_[u] for u in ids]))
        meta = {"shrinkage": self.shrinkage, "users": ids,
                "featurizer": self.featurizer.to_dict(),
                "base": type(self.base).__name__ if self.base is not None else None}  # fmt: skip
        (out / USER_LEVEL_FILE).write_text(json.dumps(meta, indent=1))
        return out

    @classmethod
    def load(cls, directory: str | Path, base=None, cache_dir=None) -> UserLevelReward:
        """Residuals saved by ``save``; the base is ``base`` if given, else loaded from the same
        folder (``load_reward_model`` / ``FeatureReward.load``), else none."""
        folder = Path(directory)
        path = folder / USER_LEVEL_FILE
        if not path.is_file():
            raise UserError(f"{folder}: no {USER_LEVEL_FILE} (not a saved user-level reward)")
        meta = json.loads(path.read_text())
        if base is None and meta.get("base"):
            base = _load_base(folder, meta["base"])
        obj = cls(base, ReplyFeaturizer.from_dict(meta["featurizer"], cache_dir), meta["shrinkage"])
        arrays = np.load(folder / RESIDUALS_FILE)
        for uid, theta, n in zip(meta["users"], arrays["theta"], arrays["n"], strict=True):
            obj._set(uid, np.asarray(theta, dtype=float), int(n))
        return obj


def _load_base(folder: Path, kind: str):
    if kind == "FeatureReward":
        from rlhf_persona.reward.light import FeatureReward

        return FeatureReward.load(folder)
    from rlhf_persona.reward.model import load_reward_model

    return load_reward_model(folder)
