"""Held-out evaluation of the three levels against the built-in baselines on pointwise votes.

    report = evaluate_votes(votes, item_x, split="item", options=("behaviour",), profiles=...)

One split (``votes.split_votes``), one global level, then per segmentation option (profile /
behaviour / both) a segment and a user level (``vote_models``); the baselines
(``vote_baselines``) on the same test votes; both metrics with user-resampled CIs
(``vote_metrics``) and the CIs of each level against its rival: global − ridge,
segment − pca_clusters, user − knn_users, plus segment − global, user − segment, user − global.
The segment level is a mixture over candidate segmentations (k = 2..8), weights stacked on
validation votes (``fit_segment_level``). The reported segment and user levels are stacked with
their rivals' scores: a mixture of the probabilities that [segment level, PCA clusters] and
[user level, kNN users, PCA clusters] give a vote, weights by Bayesian stacking on validation
votes that every model was refit without (``held_features``, ``stack_fit``). On the ``user``
split the validation votes of both (the mixture weights, the stack) are drawn the way the test
split is (``validation_like``: held-out users keeping half their votes), so the weights learn
how reliable each model is for users placed from a few votes.

The segmentation's behaviour mode ``auto`` picks ``items`` (each user's vote per item, Polis's
own approach) when items are shared — the median item has ``ITEMS_MIN_VOTERS`` voters or more —
and ``features`` (preference direction over reply features) otherwise; the report names the mode
and why.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from rlhf_persona.errors import UserError
from rlhf_persona.reward import vote_baselines as vb
from rlhf_persona.reward.vote_metrics import per_user, summarise
from rlhf_persona.reward.vote_models import (
    GlobalVoteModel,
    SegmentMixture,
    SegmentVoteModel,
    UserFactorModel,
    mixture_weights,
    prob_logit,
    sigmoid,
    softplus,
    validation_mask,
    vote_folds,
)
from rlhf_persona.reward.votes import VoteData, split_votes

log = logging.getLogger(__name__)
LEVELS = ("global", "segment", "user")
BASELINES = ("ridge", "user_intercept", "pca_clusters", "knn_users")
COMPARISONS = (("global", "ridge"), ("segment", "pca_clusters"), ("user", "knn_users"),
               ("user", "user_intercept"), ("segment", "global"), ("user", "segment"),
               ("user", "global"))  # fmt: skip
ITEMS_MIN_VOTERS = 5
FOLDS = 5
MIN_MIXTURE_WEIGHT = 0.02  # segmentations below this stacking weight are not refit


def validation_like(train: VoteData, split: str, seed: int, share: float = 0.15) -> np.ndarray:
    """Validation votes drawn the way ``split`` draws its test votes: for ``user``, a share
    (2 × ``share``) of the users, each holding out half of their training votes — so weights
    picked on them see users placed from few votes, as the held-out users are; otherwise a
    random ``share`` of the votes (``validation_mask``)."""
    if split != "user":
        return validation_mask(train, seed, share)
    rng = np.random.default_rng(seed + 7)
    held = rng.random(train.n_users) < 2 * share
    return held[train.user] & (rng.random(len(train)) < 0.5)


def choose_behaviour(votes: VoteData, behaviour: str) -> tuple[str, str]:
    """(mode, why): ``auto`` → items when the median item has enough voters (see module)."""
    voters = np.bincount(votes.item, minlength=votes.n_items)
    median = float(np.median(voters[voters > 0])) if (voters > 0).any() else 0.0
    if behaviour in ("items", "features"):
        return behaviour, f"set by segmentation.behaviour (median item has {median:g} voters)"
    if behaviour != "auto":
        raise UserError(f"segmentation.behaviour: {behaviour!r} is not auto, items or features")
    if median >= ITEMS_MIN_VOTERS:
        return "items", f"auto: the median item has {median:g} voters (≥ {ITEMS_MIN_VOTERS})"
    return "features", f"auto: the median item has {median:g} voters (< {ITEMS_MIN_VOTERS})"


def segment_users(train: VoteData, profiles: list[dict], option: str, mode: str,
                  k: int | None, seed: int, k_range=(2, 8)):  # fmt: skip
    """Candidate segmentations fit on training votes: ``{k: segment id per user}`` (one entry
    when ``k`` is set, else one per k in ``k_range``), or the reason the option is unavailable."""
    from rlhf_persona.segmentation import Segmenter
    from rlhf_persona.segmentation.data import user_table_from_events
    from rlhf_persona.segmentation.features import UserTable, vote_matrix

    if option in ("profile", "both") and not any(profiles):
        return "unavailable: no user has a profile (e.g. Polis participants are anonymous)"
    if mode == "items":
        mat = vote_matrix(train.user, train.item, train.y, train.n_users, train.n_items)
        n_fb = np.bincount(train.user, minlength=train.n_users)
        table = UserTable(list(train.user_ids), profiles, mat, n_fb,
                          [str(i) for i in range(train.n_items)], "items")  # fmt: skip
    else:
        users = [{"user_id": u, "profile": p}
                 for u, p in zip(train.user_ids, profiles, strict=True)]  # fmt: skip
        table = user_table_from_events(users, train.events(), behaviour="features")
    out = {}
    for kk in [k] if k else range(k_range[0], k_range[1] + 1):
        try:
            seg = Segmenter(k=kk, features=option, min_feedback=7 if mode == "items" else 1,
                            random_state=seed).fit(table)  # fmt: skip
        except UserError as exc:  # too few users for this k
            log.info("segmentation k=%s: %s", kk, exc)
            continue
        out[kk] = np.asarray(seg.assign(table)[0], dtype=np.int64)
    return out or "unavailable: too few users with feedback to form segments"


def segment_mixture(glob, votes, segs: dict, item_x, folds) -> SegmentMixture:
    """The mixture of segment levels, one per segmentation in ``segs`` ({k: (segment id per
    user, weight)}), each fit on ``votes``."""
    models = [SegmentVoteModel(glob).fit(votes, seg, item_x, folds) for seg, _ in segs.values()]
    return SegmentMixture(models, [w for _, w in segs.values()])


def fit_segment_level(glob, train, segment_args: tuple, item_x, folds, seed: int,
                      split: str = "item"):  # fmt: skip
    """The segment level as a mixture over segmentations (k), weighted by validation:
    segmentations and segment models fit without a validation share of the training votes
    (drawn like the test split, ``validation_like``), the mixture weights that predict those
    votes best (``mixture_weights``: Bayesian stacking; a flat validation curve over k keeps
    several k instead of betting on a noisy argmax); the segmentations that carry weight are
    refit on all training votes. Returns (mixture, {k: (segments, weight)}, validation info)."""
    val = validation_like(train, split, seed)
    fit_part, held = train.subset(~val), train.subset(val)
    candidates = segment_users(fit_part, *segment_args)
    if isinstance(candidates, str):
        return candidates
    losses, probs = {}, []
    for kk, seg in candidates.items():
        model = SegmentVoteModel(glob).fit(fit_part, seg, item_x, folds[~val])
        vote_loss = softplus(-held.y * model.logit(held.user, held.item))
        losses[kk] = round(float(vote_loss.sum()), 1)
        probs.append(np.exp(-vote_loss))
    weights = dict(zip(candidates, mixture_weights(np.array(probs)), strict=True))
    full = segment_users(train, *segment_args)
    if isinstance(full, str):
        return full
    keep = {kk: w for kk, w in weights.items() if w >= MIN_MIXTURE_WEIGHT and kk in full}
    if not keep:  # the weighted k did not segment all votes: the best-predicting k that did
        kk = min(full, key=lambda kk: losses.get(kk, np.inf))
        keep = {kk: 1.0}
    total = sum(keep.values())
    segs = {kk: (full[kk], w / total) for kk, w in keep.items()}
    info = {
        "val_loss_by_k": losses,
        "mixture_weights": {kk: round(float(w) / total, 4) for kk, w in keep.items()},
    }
    return segment_mixture(glob, train, segs, item_x, folds), segs, info


def _scores_baselines(train, test, item_x, folds, global_model, seed) -> tuple[dict, dict]:
    ridge, alpha = vb.ridge_baseline(train, item_x, folds)
    prior = vb.item_prior(train, ridge)
    bias, bias_lam = vb.user_intercept(train, global_model.logit(train.user, train.item), seed)
    cluster_score, k_pca = vb.pca_clusters(train, prior, seed)
    k_knn = _pick_knn(train, prior, seed)
    knn = vb.knn_scores(train, test.user, test.item, prior, ks=(k_knn,))[k_knn]
    scores = {
        "ridge": ridge[test.item],
        "user_intercept": global_model.logit(test.user, test.item) + bias[test.user],
        "pca_clusters": cluster_score(test.user, test.item),
        "knn_users": knn,
    }
    return scores, {"ridge_alpha": alpha, "intercept_shrinkage": bias_lam, "pca_k": k_pca,
                    "knn_k": k_knn}  # fmt: skip


def _pick_knn(train: VoteData, prior: np.ndarray, seed: int) -> int:
    """k with the best per-vote accuracy on a 10% validation share of the training votes."""
    val = np.random.default_rng(seed + 1).random(len(train)) < 0.1
    fit, held = train.subset(~val), train.subset(val)
    prior_fit = vb.item_prior(fit, np.clip(prior, -1, 1))
    scores = vb.knn_scores(fit, held.user, held.item, prior_fit)
    acc = {k: float((np.sign(s) == held.y).mean()) for k, s in scores.items()}
    return max(acc, key=lambda k: (acc[k], -k))


def stack_inputs(level_logit: np.ndarray, *baseline_scores: np.ndarray) -> list[np.ndarray]:
    """Each input as the probability it gives the vote "agree": the level's logit through the
    sigmoid, a baseline's mean vote ``s`` in [−1, 1] as ``(1 + s) / 2`` (kept off 0 and 1)."""
    return [sigmoid(level_logit)] + [np.clip((1 + s) / 2, 0.01, 0.99) for s in baseline_scores]


def stack_fit(probs: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Simplex weights of the mixture ``Σ_k w_k probs[k]`` that best predicts validation votes
    the inputs' models never saw (Bayesian stacking, as for the segmentations' mixture); too few
    votes → the first input alone. A convex mixture has no intercept and cannot put a negative
    weight on a model: on a few hundred validation votes a free logistic over the inputs
    (tried before) fitted noise, e.g. an "agree" push or a negative kNN weight."""
    if len(y) < 50 or len(np.unique(y)) < 2:
        return np.r_[1.0, np.zeros(len(probs) - 1)]
    return mixture_weights(np.array([np.where(y > 0, p, 1 - p) for p in probs]))


def stack_apply(weights: np.ndarray, probs: list[np.ndarray]) -> np.ndarray:
    """The stacked mixture's log-odds."""
    return prob_logit(sum(w * p for w, p in zip(weights, probs, strict=True)))


def held_features(train, segs: dict, item_x, folds, user_params: dict, k_knn: int, seed: int,
                  split: str = "item"):  # fmt: skip
    """Out-of-sample features on a validation share of the training votes (drawn like the
    test split, ``validation_like``), every model refit without it (same settings, same
    segmentations and mixture weights): (validation votes, {segment, user, pca_clusters,
    knn_users})."""
    if split == "user":
        val = validation_like(train, split, seed + 4)
    else:  # the other splits keep the draw they had
        val = validation_mask(train, seed + 11)
    fit, held = train.subset(~val), train.subset(val)
    glob = GlobalVoteModel().fit(fit, item_x, folds[~val])
    segment = segment_mixture(glob, fit, segs, item_x, folds[~val])
    p = user_params
    user = UserFactorModel(segment, p["rank"], p["shrinkage"], p["bias_shrinkage"], seed)
    user.fit(fit, item_x)
    ridge, _ = vb.ridge_baseline(fit, item_x, folds[~val])
    prior = vb.item_prior(fit, ridge)
    cluster_score, _ = vb.pca_clusters(fit, prior, seed)
    return held, {
        "segment": segment.logit(held.user, held.item),
        "user": user.logit(held.user, held.item),
        "pca_clusters": cluster_score(held.user, held.item),
        "knn_users": vb.knn_scores(fit, held.user, held.item, prior, ks=(k_knn,))[k_knn],
    }


def _per_segment(test: VoteData, seg: np.ndarray, scores: dict) -> dict:
    out = {}
    for lvl in LEVELS:
        hits = np.sign(scores[lvl]) == test.y
        out[lvl] = {int(s): round(float(hits[seg[test.user] == s].mean()), 4)
                    for s in np.unique(seg[test.user])}  # fmt: skip
    return out


def evaluate_votes(votes: VoteData, item_x: np.ndarray, *, split: str = "item",
                   options=("behaviour",), profiles: list[dict] | None = None,
                   behaviour: str = "auto", k: int | None = None, rank: int = 8,
                   test_share: float = 0.25, n_boot: int = 1000, seed: int = 0,
                   progress=None) -> dict:  # fmt: skip
    """The report of one held-out split (module docstring)."""
    t0 = time.perf_counter()
    step = progress or (lambda msg: log.info(msg))
    if len(votes) == 0:
        raise UserError("no votes to evaluate: thumbs ±1 or ratings off the midpoint are needed")
    test_mask = split_votes(votes, split, test_share, seed)
    train, test = votes.subset(~test_mask), votes.subset(test_mask)
    if not len(test) or not len(train):
        raise UserError(f"split {split!r}: {len(train)} train / {len(test)} test votes")
    profiles = profiles or [{} for _ in votes.user_ids]
    mode, why = choose_behaviour(train, behaviour)
    folds = vote_folds(train, FOLDS, seed, by="item" if split == "new_item" else "user")
    step("global level + baselines")
    glob = GlobalVoteModel().fit(train, item_x, folds)
    base_scores, base_params = _scores_baselines(train, test, item_x, folds, glob, seed)
    report: dict = {
        "split": split, "users": votes.n_users, "items": votes.n_items, "votes": len(votes),
        "train_votes": len(train), "test_votes": len(test),
        "test_users": int(len(np.unique(test.user))),
        "behaviour": {"mode": mode, "why": why}, "segmentations": {},
        "params": {"global": glob.params(), "baselines": base_params}, "warnings": [],
    }  # fmt: skip
    for option in options:
        step(f"segmentation {option!r} ({mode}) + segment and user levels")
        fitted = fit_segment_level(glob, train, (profiles, option, mode, k, seed), item_x,
                                   folds, seed, split)  # fmt: skip
        if isinstance(fitted, str):
            report["segmentations"][option] = fitted
            continue
        segment, segs, seg_info = fitted
        seg = segment.segment_of_user_  # the segmentation with the largest weight
        user = UserFactorModel(segment, rank=rank, seed=seed).fit(train, item_x)
        held, feats = held_features(train, segs, item_x, folds, user.params(),
                                    base_params["knn_k"], seed, split)  # fmt: skip
        w_seg = stack_fit(stack_inputs(feats["segment"], feats["pca_clusters"]), held.y)
        w_user = stack_fit(stack_inputs(feats["user"], feats["knn_users"], feats["pca_clusters"]),
                           held.y)  # fmt: skip
        pca, knn = base_scores["pca_clusters"], base_scores["knn_users"]
        seg_in = stack_inputs(segment.logit(test.user, test.item), pca)
        user_in = stack_inputs(user.logit(test.user, test.item), knn, pca)
        scores = {"global": glob.logit(test.user, test.item),
                  "segment": stack_apply(w_seg, seg_in), "user": stack_apply(w_user, user_in),
                  } | base_scores  # fmt: skip
        stats = {m: per_user(test.user, test.y, s, votes.n_users) for m, s in scores.items()}
        accs, diffs, warnings = summarise(stats, COMPARISONS, n_boot, seed)
        per_seg = _per_segment(test, seg, scores)
        report["segmentations"][option] = {
            **accs, "diffs": diffs, "k": int(len(np.unique(seg))),
            "per_segment": per_seg,
            "worst_segment": {lvl: min(v.values()) for lvl, v in per_seg.items()},
            "params": {"segment": segment.params() | seg_info,
                       "user": user.params(),
                       "stack": {"segment": np.round(w_seg, 4).tolist(),
                                 "user": np.round(w_user, 4).tolist()}},
        }  # fmt: skip
        report["warnings"] = warnings
    usable = [o for o in options if isinstance(report["segmentations"].get(o), dict)]
    if not usable:
        raise UserError(f"no usable segmentation among {list(options)}: {report['segmentations']}")
    report["segmentation"] = usable[0]
    report["levels"] = report["segmentations"][usable[0]]
    report["test_pairs"] = report["levels"]["acc_pair"]["global"]["n"]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report
