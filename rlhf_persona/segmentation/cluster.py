"""Clustering users: K-means, k by silhouette, merging tiny clusters, stable segment ids.

Every function here works on a plain float32 feature matrix, so it is testable on its own.
"""

from __future__ import annotations

import contextlib

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

# Above this many users, MiniBatchKMeans (linear time, small batches) replaces full K-means.
MINIBATCH_THRESHOLD = 50_000
# choose_k fits each candidate k on at most this many users and scores silhouette on fewer:
# silhouette is O(n²), and the shape of the data shows on a sample.
K_SEARCH_SAMPLE = 10_000
SILHOUETTE_SAMPLE = 2_500
PREDICT_CHUNK = 262_144
# Below this many users one thread is as fast, and it avoids OpenMP/BLAS spin-waiting, which on
# a busy machine turns a 400-user K-means from milliseconds into seconds (measured: 0.1 s vs 8 s).
SINGLE_THREAD_BELOW = 100_000


def thread_limit(n_rows: int):
    """A context that runs small problems single-threaded (see SINGLE_THREAD_BELOW)."""
    if n_rows < SINGLE_THREAD_BELOW:
        return threadpool_limits(limits=1)
    return contextlib.nullcontext()


def fit_kmeans(
    X: np.ndarray,
    k: int,
    seed: int = 0,
    minibatch_threshold: int = MINIBATCH_THRESHOLD,
    n_init: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """K-means (k-means++ init, best of ``n_init`` starts) → (centroids [k, D], labels [n]);
    MiniBatchKMeans (3 starts) for large n. Few starts land in visibly worse optima on real
    vote data, hence 10 by default."""
    if len(X) > minibatch_threshold:
        model = MiniBatchKMeans(
            n_clusters=k,
            init="k-means++",
            batch_size=8192,
            n_init=3,
            max_no_improvement=20,
            random_state=seed,
        ).fit(X)
        centroids = model.cluster_centers_.astype(np.float32)
        return centroids, nearest(X, centroids)[0]
    model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed).fit(X)
    return model.cluster_centers_.astype(np.float32), model.labels_.astype(np.int64)


def nearest(X: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid and the squared distances to all centroids, in chunks."""
    labels = np.empty(len(X), dtype=np.int64)
    dist = np.empty((len(X), len(centroids)), dtype=np.float32)
    c_sq = (centroids.astype(np.float32) ** 2).sum(axis=1)
    for start in range(0, len(X), PREDICT_CHUNK):
        block = X[start : start + PREDICT_CHUNK]
        d = (block**2).sum(axis=1, keepdims=True) - 2.0 * block @ centroids.T + c_sq
        np.maximum(d, 0.0, out=d)
        dist[start : start + len(block)] = d
        labels[start : start + len(block)] = d.argmin(axis=1)
    return labels, dist


def choose_k(
    X: np.ndarray,
    k_range: tuple[int, int],
    seed: int = 0,
    sample: int = K_SEARCH_SAMPLE,
    silhouette_sample: int = SILHOUETTE_SAMPLE,
) -> tuple[int, dict[int, float]]:
    """The k in ``k_range`` (inclusive) with the best silhouette, on a sample of users."""
    rng = np.random.default_rng(seed)
    sub = X[rng.choice(len(X), sample, replace=False)] if len(X) > sample else X
    lo, hi = k_range
    scores: dict[int, float] = {}
    for k in range(max(2, lo), min(hi, len(sub) - 1) + 1):
        _, labels = fit_kmeans(sub, k, seed, n_init=3)  # a rough fit is enough to compare k
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(
            silhouette_score(
                sub, labels, sample_size=min(silhouette_sample, len(sub)), random_state=seed
            )
        )
    if not scores:
        return max(1, min(lo, len(sub))), scores
    return max(scores, key=scores.get), scores


def merge_small(
    X: np.ndarray, centroids: np.ndarray, labels: np.ndarray, min_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge clusters smaller than ``min_size`` into their nearest cluster, smallest first.

    A tiny segment could single out a handful of users (and gets too little data to train on),
    so it joins the cluster whose centroid is closest; the merged centroid is the members' mean.
    Returns compacted (centroids, labels) with labels 0..k'-1.
    """
    centroids = centroids.astype(np.float32).copy()
    labels = labels.copy()
    alive = list(range(len(centroids)))
    sizes = np.bincount(labels, minlength=len(centroids))
    while len(alive) > 1:
        small = min(alive, key=lambda c: sizes[c])
        if sizes[small] >= min_size:
            break
        others = [c for c in alive if c != small]
        d = ((centroids[others] - centroids[small]) ** 2).sum(axis=1)
        target = others[int(d.argmin())]
        total = sizes[small] + sizes[target]
        if total:
            centroids[target] = (
                centroids[target] * sizes[target] + centroids[small] * sizes[small]
            ) / total
        labels[labels == small] = target
        sizes[target], sizes[small] = total, 0
        alive.remove(small)
    remap = np.full(len(centroids), -1, dtype=np.int64)
    remap[alive] = np.arange(len(alive))
    return centroids[alive], remap[labels]


def cluster_means(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean of X per label (float32 [k, D]); empty clusters get zeros."""
    # A sparse one-hot (k × n) times X: one pass in C, unlike np.add.at.
    onehot = sparse.csr_matrix(
        (np.ones(len(labels)), (labels, np.arange(len(labels)))), shape=(k, len(labels))
    )
    sums = np.asarray(onehot @ X.astype(np.float64))
    counts = np.bincount(labels, minlength=k).reshape(-1, 1)
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def match_ids(
    new_centroids: np.ndarray, previous_centroids: np.ndarray, previous_ids: np.ndarray
) -> np.ndarray:
    """Segment ids for new clusters: each takes the id of the previous cluster it matches.

    Both centroid sets must live in the same space (the previous model's features). The
    Hungarian algorithm finds the one-to-one matching with least total squared distance; new
    clusters left over (k grew) get fresh ids after the largest previous one.
    """
    cost = ((new_centroids[:, None, :] - previous_centroids[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    ids = np.full(len(new_centroids), -1, dtype=np.int64)
    ids[rows] = np.asarray(previous_ids)[cols]
    fresh = int(np.max(previous_ids)) + 1 if len(previous_ids) else 0
    for i in np.flatnonzero(ids < 0):
        ids[i] = fresh
        fresh += 1
    return ids


def gaussian_posterior(sq_dist: np.ndarray, sigma2: float, log_prior=None) -> np.ndarray:
    """P(cluster | x) under equal-variance spherical Gaussians: softmax(-d² / 2σ² + log prior)."""
    logits = -sq_dist / (2.0 * max(sigma2, 1e-12))
    if log_prior is not None:
        logits = logits + log_prior
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
