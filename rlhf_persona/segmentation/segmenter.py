"""The :class:`Segmenter`: users → segments with stable ids, confidences, cards; save / load.

scikit-learn style: ``__init__`` only stores parameters, ``fit`` returns self, learned state ends
in ``_``.

    seg = Segmenter(k=4).fit(table)                 # table: UserTable
    segments, confidence = seg.assign(new_table)    # cold start from profile, else features
    seg.cards_[0].persona_text
    seg.save("runs/x/segmenter"); seg = Segmenter.load("runs/x/segmenter")
    seg2 = Segmenter(k=4).fit(next_round_table, previous=seg)   # segment 2 stays segment 2
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

from rlhf_persona.errors import UserError
from rlhf_persona.metadata import read_meta
from rlhf_persona.segmentation.cards import SegmentCard, build_cards
from rlhf_persona.segmentation.cluster import (
    MINIBATCH_THRESHOLD,
    choose_k,
    cluster_means,
    fit_kmeans,
    gaussian_posterior,
    match_ids,
    merge_small,
    nearest,
    thread_limit,
)
from rlhf_persona.segmentation.features import FeatureSet, UserFeaturizer, UserTable

FORMAT = "rlhf_persona.segmenter"
FORMAT_VERSION = 1
# Cards and the cold-start classifier are fitted on a sample for very large populations: both
# are statistics of the segments, which a few tens of thousands of users pin down.
CARD_SAMPLE = 20_000
CLASSIFIER_SAMPLE = 30_000
# Types inside featurizer.skops that loading may construct (besides scikit-learn's, which skops
# trusts by default). Anything else in the file is refused.
TRUSTED_TYPES = [
    "numpy.dtype",
    "rlhf_persona.segmentation.features.UserFeaturizer",
    "rlhf_persona.segmentation.features.MultiHotEncoder",
    "rlhf_persona.segmentation.features.BlockScaler",
]


class Segmenter(BaseEstimator):
    """K-means segmentation of users over profile and/or behaviour features.

    Parameters
    ----------
    k: number of segments; None picks it by silhouette over ``k_range`` (inclusive).
    features: ``"profile"``, ``"behaviour"`` or ``"both"`` blocks in the clustering.
    min_segment_size: clusters with fewer users merge into their nearest neighbour.
    profile_weight, behaviour_weight: block weights (each block is first scaled to variance 1).
    behaviour_components: PCA components for the behaviour block (None: no PCA).
    min_feedback: when the clustering uses behaviour, users with fewer feedback events do not
        shape the centroids (Polis uses 7 votes); they are still assigned.
    minibatch_threshold: above this many users MiniBatchKMeans replaces K-means.
    random_state: seed for every random choice.
    """

    def __init__(
        self,
        k: int | None = None,
        k_range: tuple[int, int] = (2, 8),
        features: FeatureSet = "both",
        min_segment_size: int = 5,
        profile_weight: float = 1.0,
        behaviour_weight: float = 1.0,
        behaviour_components: int | None = None,
        min_feedback: int = 1,
        minibatch_threshold: int = MINIBATCH_THRESHOLD,
        random_state: int = 0,
    ):
        self.k = k
        self.k_range = k_range
        self.features = features
        self.min_segment_size = min_segment_size
        self.profile_weight = profile_weight
        self.behaviour_weight = behaviour_weight
        self.behaviour_components = behaviour_components
        self.min_feedback = min_feedback
        self.minibatch_threshold = minibatch_threshold
        self.random_state = random_state

    # --- fitting ----------------------------------------------------------------------------

    def fit(self, table: UserTable, previous: Segmenter | None = None) -> Segmenter:
        """Cluster the users of ``table``; with ``previous``, keep its segment ids.

        When the clustering uses behaviour, only users with ``min_feedback`` events or more
        shape the centroids (as Polis clusters only participants with enough votes): a user
        without feedback is a zero row that would pull clusters together. Every user of
        ``table`` is then assigned (``labels_``), the others by cold start.
        """
        with thread_limit(len(table)):
            return self._fit(table, previous)

    def _fit(self, table: UserTable, previous: Segmenter | None) -> Segmenter:
        self._check_enough_users(len(table))
        self.featurizer_ = UserFeaturizer(
            features=self.features,
            profile_weight=self.profile_weight,
            behaviour_weight=self.behaviour_weight,
            behaviour_components=self.behaviour_components,
            random_state=self.random_state,
        )
        blocks = self.featurizer_.fit_blocks(table)
        X_all = self.featurizer_.stack(blocks)
        fit_rows = self._fit_rows(table)
        self._check_enough_users(int(fit_rows.sum()), with_feedback=len(table))
        fit_table = table.subset(fit_rows)
        X = X_all[fit_rows]
        if self.k is None:
            self.k_, self.silhouette_ = choose_k(X, tuple(self.k_range), self.random_state)
        else:
            self.k_, self.silhouette_ = int(self.k), {}
        centroids, labels = fit_kmeans(X, self.k_, self.random_state, self.minibatch_threshold)
        centroids, labels = merge_small(X, centroids, labels, self.min_segment_size)
        # Centroids as members' means (after merging), and the spread around them for confidences.
        self.centroids_ = cluster_means(X, labels, len(centroids))
        sq = ((X - self.centroids_[labels]) ** 2).sum(axis=1)
        self.sigma2_ = float(sq.mean() / max(X.shape[1], 1))
        self.segment_ids_ = self._segment_ids(fit_table, labels, previous)
        # Cold-start prior: the clusters' shares among the users that shaped them.
        self.prior_ = np.bincount(labels, minlength=len(centroids)) / len(labels)
        profile = blocks["profile"]
        self.classifier_ = self._fit_classifier(
            None if profile is None else profile[fit_rows], self.segment_ids_[labels]
        )
        self.behaviour_stats_ = table.behaviour_stats
        self.n_users_ = len(table)
        self.labels_ = self._assign(X_all, profile, table)[0]
        ids, counts = np.unique(self.labels_, return_counts=True)
        self.sizes_ = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        self.cards_ = self._build_cards(table, self.labels_)
        return self

    def _fit_rows(self, table: UserTable) -> np.ndarray:
        """Users that shape the centroids (all, unless behaviour is clustered)."""
        if "behaviour" in self.featurizer_.blocks_:
            return table.n_feedback >= max(self.min_feedback, 1)
        return np.ones(len(table), dtype=bool)

    def _check_enough_users(self, n: int, with_feedback: int | None = None) -> None:
        who = "users" if with_feedback is None else f"users with ≥ {self.min_feedback} feedback"
        if n == 0:
            raise UserError(f"no {who} to segment (the store has {with_feedback or 0} users)")
        k = self.k if self.k is not None else self.k_range[0]
        need = max(k * self.min_segment_size, k + 1 if self.k is None else k)
        if n < need:
            what = f"k={k}" if self.k is not None else f"the smallest k in k_range={self.k_range}"
            raise UserError(
                f"too few users for {what}: {n} {who}, need at least {need} "
                f"(k × min_segment_size={self.min_segment_size}); collect more feedback, "
                "or lower segmentation.k / segmentation.min_segment_size"
            )

    def _segment_ids(self, table: UserTable, labels: np.ndarray, previous) -> np.ndarray:
        k = int(labels.max()) + 1
        if previous is None:
            # Fresh ids ordered by size (largest segment is 0): deterministic and readable.
            order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
            ids = np.empty(k, dtype=np.int64)
            ids[order] = np.arange(k)
            return ids
        # Express the new clusters in the previous model's feature space and match centroids.
        X_prev = previous.transform(table)
        return match_ids(
            cluster_means(X_prev, labels, k), previous.centroids_, previous.segment_ids_
        )

    def _sample(self, n: int, size: int) -> np.ndarray:
        if n <= size:
            return np.arange(n)
        return np.sort(np.random.default_rng(self.random_state).choice(n, size, replace=False))

    def _fit_classifier(self, profile: np.ndarray | None, segments: np.ndarray):
        """Profile → segment, for cold-start users (None without profile data or one segment)."""
        if profile is None or len(np.unique(segments)) < 2:
            return None
        idx = self._sample(len(profile), CLASSIFIER_SAMPLE)
        return LogisticRegression(C=1.0, max_iter=1000).fit(profile[idx], segments[idx])

    def _build_cards(self, table: UserTable, segments: np.ndarray) -> list[SegmentCard]:
        idx = self._sample(len(table), CARD_SAMPLE)
        return build_cards(table.subset(idx), segments[idx], counts=self.sizes_)

    # --- using a fitted segmenter ------------------------------------------------------------

    def transform(self, table: UserTable) -> np.ndarray:
        """The clustering features of ``table``'s users (float32)."""
        return self.featurizer_.transform(table)

    def assign(self, table: UserTable) -> tuple[np.ndarray, np.ndarray]:
        """(segment id, confidence) per user.

        Users with feedback are placed by their full features: the posterior of equal-variance
        Gaussians around the centroids. When the clustering uses behaviour, users with no
        feedback yet are cold-start: the profile classifier's probabilities (or the clusters'
        shares when there is no profile) decide.
        """
        f = self.featurizer_
        with thread_limit(len(table)):
            blocks = f.transform_blocks(table)
            return self._assign(f.stack(blocks), blocks["profile"], table)

    def _assign(self, X: np.ndarray, profile: np.ndarray | None, table: UserTable):
        _, sq = nearest(X, self.centroids_)
        proba = gaussian_posterior(sq, self.sigma2_)
        cold = table.n_feedback == 0
        if "behaviour" in self.featurizer_.blocks_ and cold.any():
            has_profile = np.array([bool(p) for p in table.profiles])[cold]
            proba[cold] = self._cold_proba(None if profile is None else profile[cold], has_profile)
        best = proba.argmax(axis=1)
        return self.segment_ids_[best], proba.max(axis=1).astype(np.float32)

    def predict(self, table: UserTable) -> np.ndarray:
        return self.assign(table)[0]

    def _cold_proba(self, profile: np.ndarray | None, has_profile: np.ndarray) -> np.ndarray:
        """Cold-start probabilities over clusters (columns in centroid order)."""
        prior = np.tile(self.prior_, (len(has_profile), 1))
        if self.classifier_ is None or profile is None:
            return prior
        col = {int(c): j for j, c in enumerate(self.classifier_.classes_)}
        proba = self.classifier_.predict_proba(profile)
        out = np.zeros_like(prior)
        for j, seg in enumerate(self.segment_ids_):
            if int(seg) in col:
                out[:, j] = proba[:, col[int(seg)]]
        # Users with no profile at all carry no evidence: the segment shares are the best guess.
        out[~has_profile] = prior[~has_profile]
        return out

    # --- persistence -------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``segmenter.json`` (params, ids, cards), ``centroids.npy`` and
        ``featurizer.skops`` (the fitted sklearn pipelines, loadable without pickle)."""
        import skops.io as sio

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "params": {**self.get_params(), "k_range": list(self.k_range)},
            "k": self.k_,
            "silhouette": {str(k): v for k, v in self.silhouette_.items()},
            "segment_ids": self.segment_ids_.tolist(),
            "sizes": {str(k): v for k, v in self.sizes_.items()},
            "prior": self.prior_.tolist(),
            "sigma2": self.sigma2_,
            "n_users": self.n_users_,
            "behaviour_stats": self.behaviour_stats_,
            "cards": [c.to_dict() for c in self.cards_],
        }
        (out / "segmenter.json").write_text(json.dumps(meta, indent=1))
        np.save(out / "centroids.npy", self.centroids_, allow_pickle=False)
        sio.dump(
            {"featurizer": self.featurizer_, "classifier": self.classifier_},
            out / "featurizer.skops",
        )
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Segmenter:
        """Load a saved segmenter; refuses other format versions and untrusted object types."""
        import skops.io as sio

        src = Path(directory)
        meta = read_meta(src / "segmenter.json", "segmenter", FORMAT, FORMAT_VERSION,
                         "refit the segmenter")  # fmt: skip
        blob = src / "featurizer.skops"
        untrusted = set(sio.get_untrusted_types(file=blob)) - set(TRUSTED_TYPES)
        if untrusted:
            raise UserError(f"{blob}: refusing to load unexpected types {sorted(untrusted)}")
        objects = sio.load(blob, trusted=TRUSTED_TYPES)
        params = dict(meta["params"])
        params["k_range"] = tuple(params["k_range"])
        seg = cls(**params)
        seg.featurizer_ = objects["featurizer"]
        seg.classifier_ = objects["classifier"]
        seg.centroids_ = np.load(src / "centroids.npy", allow_pickle=False)
        seg.k_ = meta["k"]
        seg.silhouette_ = {int(k): v for k, v in meta["silhouette"].items()}
        seg.segment_ids_ = np.asarray(meta["segment_ids"], dtype=np.int64)
        seg.sizes_ = {int(k): v for k, v in meta["sizes"].items()}
        seg.prior_ = np.asarray(meta["prior"], dtype=np.float64)
        seg.sigma2_ = float(meta["sigma2"])
        seg.n_users_ = meta["n_users"]
        seg.behaviour_stats_ = meta["behaviour_stats"]
        seg.cards_ = [SegmentCard.from_dict(c) for c in meta["cards"]]
        return seg
