"""User features for segmentation: profile attributes and feedback behaviour → one matrix.

Two blocks, each a scikit-learn pipeline ending in a :class:`BlockScaler` (total variance 1, so a
block's width does not decide its influence), stacked with per-block weights:

- **profile**: a ``ColumnTransformer`` over the profile attributes — strings one-hot encoded,
  numbers imputed (median) and standardised, lists of strings (interests) multi-hot encoded.
  Users with no profile get the imputed / all-zero encoding.
- **behaviour**: one row per user, computed upstream from their feedback (see
  :func:`estimate_preferences` and :func:`vote_matrix`): either the user's estimated preference
  direction over reply features, or their vote on each item (Polis-style data); optionally
  reduced by PCA. Users with no feedback have a zero row (no preference known).

A block weight ``w`` makes the block contribute ``w²`` of the squared distances K-means sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Number
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from rlhf_persona.errors import UserError

BehaviourMode = Literal["features", "items"]
FeatureSet = Literal["profile", "behaviour", "both"]
MISSING = "(missing)"
# High-cardinality strings (ids, free text) would explode the one-hot block; rarer values are
# grouped into one "infrequent" column.
MAX_CATEGORIES = 32
MAX_MULTI_CLASSES = 64
SCHEMA_SAMPLE = 5_000


@dataclass
class UserTable:
    """What the store knows about a set of users, ready for featurisation.

    ``behaviour[i]`` is user i's feedback summary (zeros when ``n_feedback[i] == 0``);
    ``behaviour_names`` names its columns (reply features, or item ids in ``"items"`` mode).
    ``behaviour_stats`` holds the reply-feature standardisation used to compute it, so new users
    can be put on the same scale; ``item_labels`` gives readable item texts in ``"items"`` mode.
    """

    user_ids: list[str]
    profiles: list[dict]
    behaviour: np.ndarray
    n_feedback: np.ndarray
    behaviour_names: list[str]
    behaviour_mode: BehaviourMode = "features"
    behaviour_stats: dict | None = None
    item_labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        self.behaviour = np.asarray(self.behaviour, dtype=np.float32).reshape(n, -1)
        self.n_feedback = np.asarray(self.n_feedback, dtype=np.int64).reshape(n)
        if len(self.profiles) != n:
            raise ValueError(f"{len(self.profiles)} profiles for {n} users")
        if self.behaviour.shape[1] != len(self.behaviour_names):
            raise ValueError(
                f"behaviour has {self.behaviour.shape[1]} columns, "
                f"{len(self.behaviour_names)} names"
            )

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, index) -> UserTable:
        """The rows ``index`` (int array or boolean mask) as a new table."""
        idx = np.arange(len(self))[index]
        return UserTable(
            user_ids=[self.user_ids[i] for i in idx],
            profiles=[self.profiles[i] for i in idx],
            behaviour=self.behaviour[idx],
            n_feedback=self.n_feedback[idx],
            behaviour_names=list(self.behaviour_names),
            behaviour_mode=self.behaviour_mode,
            behaviour_stats=self.behaviour_stats,
            item_labels=self.item_labels,
        )

    def aligned_behaviour(self, names: list[str]) -> np.ndarray:
        """Behaviour columns reordered to ``names``; columns this table lacks are zeros."""
        if list(names) == list(self.behaviour_names):
            return self.behaviour
        pos = {name: j for j, name in enumerate(self.behaviour_names)}
        out = np.zeros((len(self), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            if name in pos:
                out[:, j] = self.behaviour[:, pos[name]]
        return out


# --- behaviour from feedback -------------------------------------------------------------------


def estimate_preferences(
    user_index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    absolute: np.ndarray,
    n_users: int,
    alpha: float = 5.0,
) -> np.ndarray:
    """Per-user ridge regression of feedback on reply features, all users at once.

    Row r is one feedback event of user ``user_index[r]``: ``x[r]`` the (standardised) features
    of the rated reply — or for a pairwise choice the difference between the two replies — and
    ``y[r]`` the signal (+1/-1 thumbs or choice, centred rating). Absolute events (thumbs,
    ratings) get a per-user intercept, so a user who likes everything is not read as liking
    every feature; pairwise differences need none. The ridge prior ``alpha`` shrinks users with
    little feedback towards "no preference" (zero). Returns weights ``[n_users, F]``.
    """
    m, f = x.shape
    z = np.empty((m, f + 1), dtype=np.float64)
    z[:, :f] = x
    z[:, f] = absolute
    d = f + 1
    # Per-user Gram matrix and moment vector by bincount over the upper triangle: O(m·d²) time,
    # O(n·d²) memory, no Python loop over users.
    gram = np.zeros((n_users, d, d))
    for i in range(d):
        for j in range(i, d):
            col = np.bincount(user_index, weights=z[:, i] * z[:, j], minlength=n_users)
            gram[:, i, j] = col
            gram[:, j, i] = col
    moment = np.stack(
        [np.bincount(user_index, weights=z[:, i] * y, minlength=n_users) for i in range(d)],
        axis=1,
    )
    penalty = np.full(d, float(alpha))
    penalty[-1] = 1e-3 * max(alpha, 1e-12)  # intercept: nearly free, but keeps the system regular
    gram[:, np.arange(d), np.arange(d)] += penalty
    weights = np.linalg.solve(gram, moment[..., None])[..., 0]
    return weights[:, :f].astype(np.float32)


def feature_stats(features: np.ndarray) -> dict:
    """Mean and scale (SD; 1 for constant features) of reply features, as JSON-able lists."""
    sd = features.std(axis=0)
    return {"mean": features.mean(axis=0).tolist(), "scale": np.where(sd > 1e-6, sd, 1.0).tolist()}


def preference_directions(
    user_index: np.ndarray,
    features: np.ndarray,
    other_features: np.ndarray,
    pairwise: np.ndarray,
    signal: np.ndarray,
    n_users: int,
    stats: dict,
    alpha: float = 5.0,
) -> np.ndarray:
    """Each user's preference weights over standardised reply features (see
    :func:`estimate_preferences`). Absolute judgements (thumbs, ratings) see the reply's
    features; a pairwise choice sees the difference between the two replies' features."""
    mean, scale = np.asarray(stats["mean"]), np.asarray(stats["scale"])
    pairwise = np.asarray(pairwise, dtype=bool)
    x = np.asarray(features, dtype=np.float64) - mean
    x[pairwise] = features[pairwise] - other_features[pairwise]
    x /= scale
    return estimate_preferences(user_index, x, signal, ~pairwise, n_users, alpha)


def vote_matrix(
    user_index: np.ndarray, item_index: np.ndarray, values: np.ndarray, n_users: int, n_items: int
) -> np.ndarray:
    """Users × items matrix of votes (mean when a user voted twice); missing votes are 0."""
    flat = user_index.astype(np.int64) * n_items + item_index
    total = np.bincount(flat, weights=values, minlength=n_users * n_items)
    count = np.bincount(flat, minlength=n_users * n_items)
    out = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return out.reshape(n_users, n_items).astype(np.float32)


# --- profile ------------------------------------------------------------------------------------


def _kind(value) -> str | None:
    if isinstance(value, list | tuple | set):
        return "multi"
    if isinstance(value, str | bool):
        return "categorical"
    if isinstance(value, Number):
        return "numeric"
    return None  # missing, or a nested object: not a feature


def infer_profile_schema(profiles: list[dict], sample: int = SCHEMA_SAMPLE) -> dict[str, str]:
    """Attribute → kind (``categorical`` | ``numeric`` | ``multi``) from the values seen.

    Strings and booleans are categorical, numbers numeric, lists of strings multi-valued; an
    attribute whose values mix kinds is treated as categorical (its values as strings). Every
    attribute of every profile is found; kinds are read on an evenly spaced sample (a million
    profiles need not all be inspected), and on all profiles for attributes the sample misses.
    """
    present = [p for p in profiles if p]
    keys = set().union(*present) if present else set()
    sampled = present[:: max(1, len(present) // sample)]
    schema = {}
    for key in sorted(keys, key=str):
        found = {_kind(p.get(key)) for p in sampled} - {None}
        if not found:
            found = {_kind(p.get(key)) for p in present if key in p} - {None}
        if found:
            schema[str(key)] = found.pop() if len(found) == 1 else "categorical"
    return schema


def profile_frame(profiles: list[dict], schema: dict[str, str]) -> pd.DataFrame:
    """Profiles as a DataFrame with one column per schema attribute, missing values filled."""
    columns = {}
    for key, kind in schema.items():
        values = [(p or {}).get(key) for p in profiles]
        if kind == "numeric":
            columns[key] = pd.array(
                [float(v) if isinstance(v, Number) else np.nan for v in values], dtype="float64"
            )
        elif kind == "multi":
            columns[key] = [v if isinstance(v, list | tuple | set) else () for v in values]
        else:
            columns[key] = np.array(
                [MISSING if v is None else str(v) for v in values], dtype=object
            )
    return pd.DataFrame(columns, index=pd.RangeIndex(len(profiles)))


class MultiHotEncoder(TransformerMixin, BaseEstimator):
    """Columns of lists of strings → one 0/1 column per value seen in ``fit``.

    Like ``MultiLabelBinarizer``, but a proper ``ColumnTransformer`` step for any number of
    list-valued columns; unseen values are ignored; only the ``max_classes`` most frequent
    values of each column are kept.
    """

    def __init__(self, max_classes: int = MAX_MULTI_CLASSES):
        self.max_classes = max_classes

    def fit(self, X, y=None):
        frame = pd.DataFrame(X)
        self.columns_ = [str(c) for c in frame.columns]
        self.classes_ = []
        for col in frame.columns:
            counts = _exploded(frame[col]).value_counts()
            self.classes_.append(sorted(str(v) for v in counts.index[: self.max_classes]))
        return self

    def transform(self, X):
        frame = pd.DataFrame(X).reset_index(drop=True)
        blocks = []
        for col, classes in zip(frame.columns, self.classes_, strict=True):
            values = _exploded(frame[col])
            # Vectorised lookup (a million users' lists in well under a second): value → code.
            codes = pd.Categorical(values.to_numpy(), categories=classes).codes
            known = codes >= 0
            block = np.zeros((len(frame), len(classes)), dtype=np.float32)
            block[values.index.to_numpy()[known], codes[known]] = 1.0
            blocks.append(block)
        return np.hstack(blocks) if blocks else np.zeros((len(frame), 0), np.float32)

    def get_feature_names_out(self, input_features=None):
        return np.array(
            [
                f"{c}={v}"
                for c, classes in zip(self.columns_, self.classes_, strict=True)
                for v in classes
            ],
            dtype=object,
        )


def _exploded(column: pd.Series) -> pd.Series:
    """One row per list element (as str), indexed by the user's row; empty lists dropped."""
    values = column.explode().dropna()
    return values.astype(str)


class BlockScaler(TransformerMixin, BaseEstimator):
    """Scale a block to total variance 1 (sum over its columns) and cast to float32.

    So a 60-column one-hot block and a 10-column behaviour block start on an equal footing and
    the block weights alone say how much each counts. A constant block is scaled to zero.
    """

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        self.total_variance_ = float(X.var(axis=0).sum()) if len(X) else 0.0
        self.scale_ = 1.0 / np.sqrt(self.total_variance_) if self.total_variance_ > 1e-12 else 0.0
        return self

    def transform(self, X):
        return (np.asarray(X, dtype=np.float32) * np.float32(self.scale_)).astype(np.float32)


def build_profile_pipeline(schema: dict[str, str], frame: pd.DataFrame) -> Pipeline:
    """The profile block: ColumnTransformer by attribute kind, then block scaling.

    Each string attribute keeps its ``MAX_CATEGORIES`` most frequent values in ``frame`` (the
    rest, and values unseen later, encode as all zeros). Passing the categories explicitly
    also avoids OneHotEncoder's per-element infrequent-category pass (5 s per million users).
    """
    by_kind = {k: [c for c, kind in schema.items() if kind == k] for k in schema.values()}
    parts = []
    if by_kind.get("categorical"):
        categories = [
            sorted(frame[c].value_counts().index[:MAX_CATEGORIES].astype(str))
            for c in by_kind["categorical"]
        ]
        onehot = OneHotEncoder(
            categories=categories,
            handle_unknown="ignore",
            sparse_output=False,
            dtype=np.float32,
        )
        parts.append(("categorical", onehot, by_kind["categorical"]))
    if by_kind.get("numeric"):
        numeric = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        parts.append(("numeric", numeric, by_kind["numeric"]))
    if by_kind.get("multi"):
        parts.append(("multi", MultiHotEncoder(), by_kind["multi"]))
    columns = ColumnTransformer(parts, sparse_threshold=0.0, verbose_feature_names_out=True)
    return Pipeline([("columns", columns), ("block", BlockScaler())])


def build_behaviour_pipeline(n_components: int | None, n_columns: int, seed: int) -> Pipeline:
    """The behaviour block: optional PCA (as Polis does for vote matrices), then block scaling."""
    steps = []
    if n_components is not None and 0 < n_components < n_columns:
        steps.append(("pca", PCA(n_components=n_components, random_state=seed)))
    steps.append(("block", BlockScaler()))
    return Pipeline(steps)


class UserFeaturizer(TransformerMixin, BaseEstimator):
    """UserTable → feature matrix (float32), profile and/or behaviour blocks with weights.

    The profile block is always fitted when profiles carry attributes (the cold-start classifier
    needs it even when clustering on behaviour only); ``features`` says which blocks the
    clustering matrix from :meth:`transform` contains.
    """

    def __init__(
        self,
        features: FeatureSet = "both",
        profile_weight: float = 1.0,
        behaviour_weight: float = 1.0,
        behaviour_components: int | None = None,
        random_state: int = 0,
    ):
        self.features = features
        self.profile_weight = profile_weight
        self.behaviour_weight = behaviour_weight
        self.behaviour_components = behaviour_components
        self.random_state = random_state

    def fit(self, table: UserTable, y=None):
        self.fit_blocks(table)
        return self

    def fit_transform(self, table: UserTable, y=None) -> np.ndarray:
        return self.stack(self.fit_blocks(table))

    def fit_blocks(self, table: UserTable) -> dict[str, np.ndarray | None]:
        """Fit both blocks and return them unweighted (``None`` for an unusable block)."""
        self.schema_ = infer_profile_schema(table.profiles)
        self.profile_, profile = None, None
        if self.schema_:
            frame = profile_frame(table.profiles, self.schema_)
            pipe = build_profile_pipeline(self.schema_, frame)
            profile = pipe.fit_transform(frame)
            if pipe.named_steps["block"].scale_ > 0:  # every user alike: carries no information
                self.profile_ = pipe
            else:
                profile = None
        self.behaviour_names_ = list(table.behaviour_names)
        self.behaviour_mode_ = table.behaviour_mode
        self.behaviour_, behaviour = None, None
        rated = table.n_feedback > 0
        if table.behaviour.shape[1] and rated.any():
            pipe = build_behaviour_pipeline(
                self.behaviour_components, table.behaviour.shape[1], self.random_state
            )
            pipe.fit(table.behaviour[rated])  # users without feedback say nothing about spread
            if pipe.named_steps["block"].scale_ > 0:
                self.behaviour_ = pipe
                behaviour = pipe.transform(table.behaviour)
        self.blocks_ = self._usable_blocks(table)
        return {"profile": profile, "behaviour": behaviour}

    def _usable_blocks(self, table: UserTable) -> list[str]:
        wanted = ["profile", "behaviour"] if self.features == "both" else [self.features]
        usable = [b for b in wanted if getattr(self, f"{b}_") is not None]
        if not usable:
            reasons = {
                "profile": "no user has profile attributes that differ between users",
                "behaviour": "no user has usable feedback (thumbs, ratings or A/B choices)"
                if not table.behaviour.shape[1] or not (table.n_feedback > 0).any()
                else "all users' feedback behaviour is identical",
            }
            raise UserError(
                f"no usable features for segmentation (features={self.features!r}): "
                + "; ".join(reasons[b] for b in wanted)
            )
        return usable

    def transform_profile(self, table: UserTable) -> np.ndarray | None:
        """The (unweighted) profile block, or None when profiles carry no information."""
        if self.profile_ is None:
            return None
        return self.profile_.transform(profile_frame(table.profiles, self.schema_))

    def transform_behaviour(self, table: UserTable) -> np.ndarray | None:
        if self.behaviour_ is None:
            return None
        return self.behaviour_.transform(table.aligned_behaviour(self.behaviour_names_))

    def transform_blocks(
        self, table: UserTable, which: tuple[str, ...] = ("profile", "behaviour")
    ) -> dict[str, np.ndarray | None]:
        """The unweighted blocks named in ``which`` (others None)."""
        return {
            "profile": self.transform_profile(table) if "profile" in which else None,
            "behaviour": self.transform_behaviour(table) if "behaviour" in which else None,
        }

    def stack(self, blocks: dict[str, np.ndarray | None]) -> np.ndarray:
        """The clustering matrix from unweighted blocks: the used ones, weighted, side by side."""
        weight = {"profile": self.profile_weight, "behaviour": self.behaviour_weight}
        parts = [blocks[b] * np.float32(weight[b]) for b in self.blocks_]
        return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)

    def transform(self, table: UserTable) -> np.ndarray:
        return self.stack(self.transform_blocks(table, tuple(self.blocks_)))
