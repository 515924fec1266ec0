"""A light linear reward on cheap features: the fast global / segment levels for evaluation.

    rm = FeatureReward(ReplyFeaturizer("embedding", dims=16), conditioned=True).fit(export)
    rm.score(segment_ids, prompts, replies)

``r(s, x) = θ_g · φ(x) + θ_s · φ(x)``: a global Bradley–Terry linear model on the features,
plus a per-segment deviation ``θ_s`` fit with the global score as offset and shrunk toward 0
(``segment_shrinkage``) — the same hierarchy ``UserLevelReward`` adds one level below. With
``conditioned=False`` it is the global baseline. It trains in milliseconds (Newton on ≤ 33
unknowns), so real-data evaluations with bootstrap CIs run in seconds; on Polis, where replies
are statements, ``φ`` is the MiniLM embedding of the statement text projected to ``d`` dims.
For chat data the TRL ``RewardModel`` strategies are the full segment level; this model is
their cheap stand-in, and ``UserLevelReward`` works on top of either.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf_persona.errors import UserError
from rlhf_persona.reward.data import NO_SEGMENT
from rlhf_persona.reward.user_level import ReplyFeaturizer, as_pairs, fit_logistic

LIGHT_FILE = "feature_reward.json"


class FeatureReward:
    """Linear reward on ``featurizer`` features, global + shrunk per-segment terms."""

    def __init__(self, featurizer: ReplyFeaturizer | None = None, conditioned: bool = True,
                 global_shrinkage: float = 1.0, segment_shrinkage: float = 5.0):  # fmt: skip
        self.featurizer = featurizer or ReplyFeaturizer("reply")
        self.conditioned = conditioned
        self.global_shrinkage = global_shrinkage
        self.segment_shrinkage = segment_shrinkage

    def fit(self, data) -> FeatureReward:
        pairs = as_pairs(data)
        if not hasattr(self.featurizer, "center_"):
            self.featurizer.fit(pairs.both_prompts(), pairs.chosen + pairs.rejected)
        n = len(pairs)
        x = self.featurizer.transform(pairs.both_prompts(), pairs.chosen + pairs.rejected)
        dx, y = x[:n] - x[n:], np.ones(n)
        self.global_ = fit_logistic(dx, y, np.zeros(n), self.global_shrinkage)
        offset = dx @ self.global_
        self.segments_: dict[int, np.ndarray] = {}
        if self.conditioned:
            for s in sorted(set(pairs.segment.tolist()) - {NO_SEGMENT}):
                m = pairs.segment == s
                self.segments_[s] = fit_logistic(dx[m], y[m], offset[m], self.segment_shrinkage)
        return self

    def score(self, segment_ids, prompts, replies) -> np.ndarray:
        if not hasattr(self, "global_"):
            raise UserError("FeatureReward is not fitted")
        n = len(prompts)
        if segment_ids is None or np.isscalar(segment_ids):
            segment_ids = [segment_ids] * n
        x = self.featurizer.transform(list(prompts), list(replies))
        zero = np.zeros_like(self.global_)
        theta = np.stack(
            [self.global_ + self.segments_.get(-1 if s is None else int(s), zero)
             for s in segment_ids]
        ) if n else np.zeros((0, len(zero)))  # fmt: skip
        return np.einsum("ij,ij->i", theta, x)

    def save(self, directory) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"featurizer": self.featurizer.to_dict(), "conditioned": self.conditioned,
                "global_shrinkage": self.global_shrinkage,
                "segment_shrinkage": self.segment_shrinkage, "global": self.global_.tolist(),
                "segments": {str(k): v.tolist() for k, v in self.segments_.items()}}  # fmt: skip
        (out / LIGHT_FILE).write_text(json.dumps(meta))
        return out

    @classmethod
    def load(cls, directory) -> FeatureReward:
        path = Path(directory) / LIGHT_FILE
        if not path.is_file():
            raise UserError(f"{directory}: no {LIGHT_FILE}")
        meta = json.loads(path.read_text())
        obj = cls(ReplyFeaturizer.from_dict(meta["featurizer"]), meta["conditioned"],
                  meta["global_shrinkage"], meta["segment_shrinkage"])  # fmt: skip
        obj.global_ = np.asarray(meta["global"])
        obj.segments_ = {int(k): np.asarray(v) for k, v in meta["segments"].items()}
        return obj
