"""Simple baselines every personalization report carries, scored on the same test votes.

* ``ridge`` — ridge regression of the ±1 vote on the item's text embedding (α by user-fold
  cross-validation): the plain global text model the global level must match;
* ``user_intercept`` — the global level plus each user's shrunk mean residual (their
  agree-bias): helps per-vote accuracy, cancels in within-user pairs;
* ``pca_clusters`` — Polis-style: users' training vote vectors → PCA (2 components) → K-means
  (k by silhouette), each cluster's smoothed mean vote on the item: the segment level's rival;
* ``knn_users`` — the ``k`` most similar users (cosine of training vote vectors) who voted on the
  item, similarity-weighted mean vote (k picked on a validation share): the user level's rival.

Each returns a score per test vote (> 0: predicts agree).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import Ridge

from rlhf_persona.reward.vote_models import (
    counts,
    cv_pick,
    fit_groups,
    softplus,
    validation_mask,
)

BIAS_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)

RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
KNN_GRID = (5, 10, 20, 50, 100)
PRIOR_WEIGHT = 2.0  # pseudo-votes pulling a sparse item / cluster mean toward its prior


def _squared(score, pos, neg) -> float:
    return float(pos @ (1 - score) ** 2 + neg @ (1 + score) ** 2)


def ridge_scores(item_x: np.ndarray, pos, neg, alpha: float) -> np.ndarray:
    keep = (pos + neg) > 0
    if keep.sum() < 2:
        return np.zeros(len(item_x))
    mean = (pos - neg)[keep] / (pos + neg)[keep]  # weighted least squares on the item means
    model = Ridge(alpha=alpha).fit(item_x[keep], mean, sample_weight=(pos + neg)[keep])
    return model.predict(item_x)


def ridge_baseline(train, item_x, folds) -> tuple[np.ndarray, float]:
    """Per-item ridge score and the chosen α."""
    alpha = cv_pick(RIDGE_GRID, lambda a, p, q: ridge_scores(item_x, p, q, a), train, folds,
                    train.item, train.n_items, loss=_squared)  # fmt: skip
    pos, neg = counts(train.item, train.y, train.n_items)
    return ridge_scores(item_x, pos, neg, alpha), alpha


def item_prior(train, ridge: np.ndarray) -> np.ndarray:
    """Each item's mean training vote, smoothed toward the ridge text score (unseen: ridge)."""
    pos, neg = counts(train.item, train.y, train.n_items)
    return (pos - neg + PRIOR_WEIGHT * np.clip(ridge, -1, 1)) / (pos + neg + PRIOR_WEIGHT)


def user_intercept(train, global_logit: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """Per-user MAP intercept on top of the global level (the user's agree-bias), its prior
    strength picked on a validation share of the votes; (intercepts, strength)."""
    val = validation_mask(train, seed)
    x = np.ones((len(train), 1))

    def fit(rows, lam):
        return fit_groups(train.user[rows], x[rows], train.y[rows], global_logit[rows], lam,
                          train.n_users)[:, 0]  # fmt: skip

    def held_loss(lam):
        z = global_logit[val] + fit(~val, lam)[train.user[val]]
        return float(softplus(-train.y[val] * z).sum())

    loss = {lam: held_loss(lam) for lam in BIAS_GRID}
    lam = min(loss, key=loss.get)
    return fit(np.ones(len(train), bool), lam), lam


def vote_matrix_csr(train) -> sp.csr_matrix:
    return sp.csr_matrix((train.y, (train.user, train.item)), shape=(train.n_users, train.n_items))


def pca_clusters(train, prior: np.ndarray, seed: int, k_range=(2, 5)):
    """(score function, k): the smoothed mean vote on the item of the user's vote cluster."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.metrics import silhouette_score

    mat = vote_matrix_csr(train)
    active = np.flatnonzero(np.diff(mat.indptr) > 0)
    comps = min(2, train.n_items - 1)
    proj = TruncatedSVD(comps, random_state=seed).fit_transform(mat[active])
    sample = np.random.default_rng(seed).permutation(len(active))[:5000]
    best = None
    for k in range(k_range[0], min(k_range[1], len(active) - 1) + 1):
        km = KMeans(k, n_init=4, random_state=seed).fit(proj)
        sil = silhouette_score(proj[sample], km.labels_[sample])
        if best is None or sil > best[0]:
            best = (sil, k, km.labels_)
    cluster = np.zeros(train.n_users, dtype=np.int64)  # users without votes: cluster 0
    k = 1 if best is None else best[1]
    if best is not None:
        cluster[active] = best[2]
    cell = cluster[train.user] * train.n_items + train.item
    pos, neg = counts(cell, train.y, k * train.n_items)
    prior_cells = np.tile(prior, k)
    means = (pos - neg + PRIOR_WEIGHT * prior_cells) / (pos + neg + PRIOR_WEIGHT)

    def score(user, item):
        return means[cluster[user] * train.n_items + item]

    return score, k


def knn_scores(train, user: np.ndarray, item: np.ndarray, prior: np.ndarray,
               ks=KNN_GRID, chunk: int = 512) -> dict[int, np.ndarray]:  # fmt: skip
    """Per k: similarity-weighted mean vote of the user's k nearest voters on the item (cosine
    of training vote vectors); no voter with positive similarity → the item prior."""
    mat = vote_matrix_csr(train)
    norm = np.sqrt(np.asarray(mat.multiply(mat).sum(1))).ravel()
    unit = sp.diags(1 / np.where(norm > 0, norm, 1)) @ mat
    voters = sp.csc_matrix(mat)
    out = {k: prior[item].astype(float).copy() for k in ks}
    kmax = max(ks)
    test_users = np.unique(user)
    for lo in range(0, len(test_users), chunk):
        users_here = test_users[lo : lo + chunk]
        rows = np.flatnonzero(np.isin(user, users_here))
        local = np.searchsorted(users_here, user[rows])  # row -> its user's line in sims
        sims = (unit[users_here] @ unit.T).toarray()  # chunk × all users
        sims[np.arange(len(users_here)), users_here] = 0.0  # never one's own vote
        for it in np.unique(item[rows]):
            here = item[rows] == it
            start, end = voters.indptr[it], voters.indptr[it + 1]
            if start == end:
                continue
            who, votes = voters.indices[start:end], voters.data[start:end]
            _knn_fill(out, rows[here], sims[local[here]][:, who], votes, ks, kmax)
    return out


def _knn_fill(out: dict, sel, s: np.ndarray, votes: np.ndarray, ks, kmax: int) -> None:
    take = min(kmax, s.shape[1])
    top = np.argpartition(-s, take - 1, axis=1)[:, :take] if take < s.shape[1] else None
    if top is None:
        top = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    ts = np.take_along_axis(s, top, axis=1)
    ordr = np.argsort(-ts, axis=1)
    ts = np.take_along_axis(ts, ordr, axis=1).clip(min=0)
    tv = votes[np.take_along_axis(top, ordr, axis=1)]
    for k in ks:
        w, v = ts[:, :k], tv[:, :k]
        den = w.sum(1)
        has = den > 0
        out[k][sel[has]] = (w[has] * v[has]).sum(1) / den[has]
