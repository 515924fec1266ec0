"""Global vs segment vs user level, on simulated splits (with ceilings) and on any feedback store.

Simulated (``simulate_split``; the simulator's truth gives the ceilings):

* ``sim_levels`` — expected pairwise accuracy of the global, segment and user-level models for
  seen users on unseen prompts, beside the Bayes ``segment_ceiling`` (no model that knows only
  the segment can pass it) and ``personal_ceiling``;
* ``few_shot`` — new users after 0, 5, 20, 50 of their own labels: segment-only (the labels
  re-assign their segment) vs user-level (they also fit the user's residual).

Any store (``store_levels``; imported Polis votes, a live chatbot's thumbs...): the store's
single-reply labels as pointwise votes (``reward/votes.py``), a held-out split (``item``: a share
of each user's own votes; ``user``: held-out users keep half their votes as shots; ``new_item``:
statements unseen by everyone), the levels of ``reward/vote_models.py`` against the baselines of
``reward/vote_baselines.py``, per-vote and within-user pairwise accuracy with user-resampled CIs
(``reward/vote_eval.py``; docs/personalization.md). Memory is checked before any allocation.

A store with A/B choices only (no single-reply label) falls back to ``pair_levels``: the light
pair models (``FeatureReward`` + ``UserLevelReward``) on at most ``max_pairs`` sampled pairs,
test pairs with both replies among the user's held-out items. Imported data has no ground
truth, so no ceilings: the report says so.
"""

from __future__ import annotations

import logging

import numpy as np

from rlhf_persona.errors import UserError
from rlhf_persona.reward.data import PairData, pairs_from
from rlhf_persona.reward.light import FeatureReward
from rlhf_persona.reward.user_level import ReplyFeaturizer, UserLevelReward, as_pairs

log = logging.getLogger(__name__)
LEVELS = ("global", "segment", "user")
NO_CEILINGS = "unavailable: imported data has no ground truth (ceilings need the simulator)"
MAX_PAIRS = 200_000  # pair_levels: pairs sampled above this (pairs grow ~ votes² per user)
ONE_HOT_BYTES = 2 * 2**30  # pair_levels: the per-item one-hot block is dropped above this


def _margins(model, pairs: PairData, user_level: bool = False) -> np.ndarray:
    """Score margin r(chosen) − r(rejected) per pair."""
    n = len(pairs)
    args = (pairs.segment.tolist() * 2, pairs.both_prompts(), pairs.chosen + pairs.rejected)
    r = model.score(*args, user_ids=pairs.user_ids * 2) if user_level else model.score(*args)
    return r[:n] - r[n:]


def fit_levels(train, featurizer: ReplyFeaturizer, shrinkage: float, base=None,
               user_featurizer: ReplyFeaturizer | None = None) -> dict:  # fmt: skip
    """The three levels fit on ``train`` pairs; ``base`` replaces the light segment model;
    ``user_featurizer`` (default: ``featurizer``) gives the residuals' features."""
    pairs = as_pairs(train)
    texts = (pairs.both_prompts(), pairs.chosen + pairs.rejected)
    featurizer.fit(*texts)
    glob = FeatureReward(featurizer, conditioned=False).fit(pairs)
    seg = base if base is not None else FeatureReward(featurizer).fit(pairs)
    user_feats = user_featurizer.fit(*texts) if user_featurizer is not None else featurizer
    user = UserLevelReward(seg, user_feats, shrinkage).fit(pairs)
    return {"global": glob, "segment": seg, "user": user}


# --- simulation -------------------------------------------------------------------------------


def pairset_rows(split, pairs, segments=None) -> list[dict]:
    """Preference rows (chosen/rejected by the user's sampled choice) of a simulated PairSet."""
    segs = split.segments(pairs) if segments is None else segments
    return [
        {"prompt": p, "chosen": a if y > 0 else b, "rejected": b if y > 0 else a,
         "user_id": split.users.ids[u], "segment_id": int(s)}
        for p, a, b, y, u, s in zip(pairs.prompts, pairs.reply_a, pairs.reply_b, pairs.label,
                                    pairs.user_idx, segs, strict=True)
    ]  # fmt: skip


def _expected_acc(pairs, diff: np.ndarray) -> float:
    """Expected accuracy against the users' own noisy choices (ties count half)."""
    p = pairs.p_true
    return float(np.where(diff > 0, p, np.where(diff < 0, 1 - p, 0.5)).mean())


def _truth_pairs(split, pairs) -> PairData:
    """A PairSet as PairData in (a, b) order, for scoring with truth kept aside."""
    return pairs_from([
        {"prompt": p, "chosen": a, "rejected": b, "user_id": split.users.ids[u],
         "segment_id": int(s)}
        for p, a, b, u, s in zip(pairs.prompts, pairs.reply_a, pairs.reply_b, pairs.user_idx,
                                 split.segments(pairs), strict=True)
    ])  # fmt: skip


def sim_levels(split, models: dict, min_labels: int = 30) -> dict:
    """Accuracy per level on seen users (with ≥ ``min_labels`` training labels) and unseen
    prompts, beside the Bayes segment and personal ceilings of the same rows."""
    from rlhf_persona.simulation import oracle

    labels = np.bincount(split.train.user_idx, minlength=len(split.users))
    keep = labels[split.seen.user_idx] >= min_labels
    if not keep.any():
        raise UserError(f"no seen user has {min_labels} training labels")
    pairs = split.seen.subset(keep)
    data = _truth_pairs(split, pairs)
    out = {lvl: _expected_acc(pairs, _margins(models[lvl], data, lvl == "user")) for lvl in LEVELS}
    ceil = oracle.bayes_accuracy(split.users, pairs.user_idx, pairs.features_a, pairs.features_b)
    out.update(segment_ceiling=ceil["segment"], personal_ceiling=ceil["personal"],
               pooled_ceiling=ceil["pooled"], n_pairs=len(pairs),
               n_users=int(len(np.unique(pairs.user_idx))))  # fmt: skip
    return out


def few_shot(split, models: dict, counts=(0, 5, 20, 50)) -> dict:
    """New users' accuracy after ``n`` own labels: segment-only vs user-level (see module)."""
    pairs, shots, new = split.unseen, split.shots, split.new_users
    firsts: dict[int, list[int]] = {}
    for row, u in enumerate(shots.user_idx.tolist()):
        firsts.setdefault(u, []).append(row)
    seg_model, user_model = models["segment"], models["user"]
    curve = {}
    for n in counts:
        events = [shots.events[r] for u in new.tolist() for r in firsts.get(u, [])[:n]]
        seg_of = dict(zip(new.tolist(), split.assign_from_feedback(new, events).tolist(),
                          strict=True))  # fmt: skip
        test = _truth_pairs(split, pairs)
        test.segment = np.array([seg_of[u] for u in pairs.user_idx.tolist()])
        personal = UserLevelReward(seg_model, user_model.featurizer, user_model.shrinkage)
        for u in new.tolist():
            rows = firsts.get(u, [])[:n]
            if rows:
                sub = shots.subset(np.array(rows))
                personal.update_user(
                    split.users.ids[u], pairset_rows(split, sub, [seg_of[u]] * len(rows))
                )
        curve[n] = {
            "segment": _expected_acc(pairs, _margins(seg_model, test)),
            "user": _expected_acc(pairs, _margins(personal, test, True)),
        }
    return curve


def simulated_report(split, shrinkage: float = 2.0, counts=(0, 5, 20, 50), base=None,
                     min_labels: int = 30) -> dict:  # fmt: skip
    """``{"sim_acc": ..., "few_shot": ...}`` on a simulated split (module docstring)."""
    models = fit_levels(split.preference_dataset(), ReplyFeaturizer("reply"), shrinkage, base)
    return {"sim_acc": sim_levels(split, models, min_labels),
            "few_shot": few_shot(split, models, counts)}  # fmt: skip


# --- any store --------------------------------------------------------------------------------


def bootstrap_ci(hits: dict[str, np.ndarray], users: np.ndarray, n_boot: int = 1000,
                 seed: int = 0) -> dict:  # fmt: skip
    """Accuracy per level and level differences with percentile 95% CIs, resampling users.

    ``hits[level]``: 1/0 (or ½ for ties) per test pair; ``users``: the pair's user.
    """
    uniq, inv = np.unique(users, return_inverse=True)
    count = np.bincount(inv, minlength=len(uniq)).astype(float)
    sums = {k: np.bincount(inv, weights=v, minlength=len(uniq)) for k, v in hits.items()}
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(uniq), size=(n_boot, len(uniq)))
    weights = np.stack([np.bincount(d, minlength=len(uniq)) for d in draws]).astype(float)
    total = weights @ count
    boot = {k: (weights @ s) / total for k, s in sums.items()}
    point = {k: float(s.sum() / count.sum()) for k, s in sums.items()}

    def ci(values):
        lo, hi = np.percentile(values, [2.5, 97.5])
        return [float(lo), float(hi)]

    out = {k: {"acc": point[k], "ci": ci(boot[k])} for k in hits}
    for a, b in (("segment", "global"), ("user", "segment"), ("user", "global")):
        if a in hits and b in hits:
            out[f"{a}-{b}"] = {"diff": point[a] - point[b], "ci": ci(boot[a] - boot[b])}
    return out


SPLITS = ("item", "user", "new_item")


def _held_items(events: list[dict], how: str, share: float, seed: int) -> dict[str, set]:
    """Each user's held-out items (see ``store_levels``)."""
    rng = np.random.default_rng(seed)
    mine: dict[str, list] = {}
    for e in events:
        mine.setdefault(e["user_id"], []).append(e["reply"])
    mine = {u: sorted(set(v)) for u, v in sorted(mine.items())}

    def some(items, frac):
        return set(rng.choice(items, size=int(round(frac * len(items))), replace=False))

    if how == "item":
        return {u: some(items, share) for u, items in mine.items()}
    if how == "user":
        out = some(sorted(mine), share)
        return {u: some(mine[u], 0.5) for u in sorted(out)}
    if how == "new_item":
        held = some(sorted({e["reply"] for e in events}), share)
        return {u: held for u in mine}
    raise UserError(f"split {how!r}: expected one of {SPLITS}")


def _split_pairs(pairs: PairData, events: list[dict], how: str, share: float, seed: int):
    """(train rows, test rows, train-event mask): test pairs have both replies among the
    user's held-out items, training pairs neither (mixed pairs would leak a training vote)."""
    held = _held_items(events, how, share, seed)
    side = [
        (r1 in held.get(u, ()), r2 in held.get(u, ()))
        for u, r1, r2 in zip(pairs.user_ids, pairs.chosen, pairs.rejected, strict=True)
    ]
    train = np.array([i for i, (c, r) in enumerate(side) if not c and not r], dtype=np.int64)
    test = np.array([i for i, (c, r) in enumerate(side) if c and r], dtype=np.int64)
    ev_train = np.array([e["reply"] not in held.get(e["user_id"], ()) for e in events])
    return train, test, ev_train


def _segment(users, events, option: str, behaviour: str, k, seed: int) -> dict[str, int] | str:
    """Segment ids per user from training events, or the reason the option is unavailable."""
    from rlhf_persona.segmentation import Segmenter, user_table_from_events

    has_profile = any(u.get("profile") for u in users)
    if option in ("profile", "both") and not has_profile:
        return "unavailable: no user has a profile (e.g. Polis participants are anonymous)"
    table = user_table_from_events(users, events, behaviour=behaviour)
    seg = Segmenter(k=k, features=option, min_feedback=7 if behaviour == "items" else 1,
                    random_state=seed).fit(table)  # fmt: skip
    return dict(zip(table.user_ids, (int(s) for s in seg.assign(table)[0]), strict=True))


def store_levels(store, *, split: str = "item", options=("behaviour",), behaviour: str = "auto",
                 k: int | None = None, test_share: float = 0.25, n_boot: int = 1000,
                 seed: int = 0, encoder: str = "embedded:minilm", rank: int = 8,
                 max_votes: int | None = None, max_gb: float = 4.0, progress=None,
                 **pair_options) -> dict:  # fmt: skip
    """Held-out global / segment / user levels against the built-in baselines on a store's
    single-reply labels (thumbs, ratings: ``reward.vote_eval``); a store with A/B choices only
    falls back to ``pair_levels``. ``max_votes`` samples whole users; a run that would not fit
    in ``max_gb`` stops first with a ``UserError`` that says what to do."""
    from rlhf_persona.reward.user_level import embed_cached
    from rlhf_persona.reward.vote_eval import choose_behaviour, evaluate_votes
    from rlhf_persona.reward.votes import check_memory, sample_users, votes_from_store

    step = progress or log.info
    step("reading votes from the store")
    votes = votes_from_store(store)
    if not len(votes):
        if votes.report.get("pairwise_events"):
            return pair_levels(store, split=split, options=options, k=k,
                               test_share=test_share, n_boot=n_boot, seed=seed,
                               encoder=encoder, **pair_options)  # fmt: skip
        raise UserError(f"{store!r}: no feedback to evaluate (thumbs, ratings or A/B choices)")
    note = None
    if max_votes:
        votes, note = sample_users(votes, max_votes, seed)
    mode, _ = choose_behaviour(votes, behaviour)
    need = check_memory(votes, max_gb, mode == "items")
    step(f"embedding {votes.n_items} items ({encoder})")
    item_x = embed_cached(votes.items, encoder).astype(float)
    by_id = {str(u["user_id"]): dict(u.get("profile") or {}) for u in store.users()}
    profiles = [by_id.get(u, {}) for u in votes.user_ids]
    try:
        report = evaluate_votes(votes, item_x, split=split, options=options, profiles=profiles,
                                behaviour=behaviour, k=k, rank=rank, test_share=test_share,
                                n_boot=n_boot, seed=seed, progress=step)  # fmt: skip
    except MemoryError:  # the estimate was too low for this machine: the same advice
        raise UserError(
            f"reward personal ran out of memory on {len(votes)} votes (estimated "
            f"{need / 2**30:.1f} GiB): sample whole users with --max-votes "
            f"{max(1, len(votes) // 2)} or segment on reply features "
            "(--set segmentation.behaviour=features)"
        ) from None
    report.update(ceilings=NO_CEILINGS, skipped=votes.report.get("skipped", {}),
                  memory_estimate_mb=round(need / 2**20), notes=[note] if note else [])  # fmt: skip
    return report


def pair_levels(store, *, split: str = "item", options=("behaviour",), behaviour: str = "features",
                 features: str = "item_embedding", dims: int = 8, shrinkage: float = 5.0,
                 k: int | None = None, test_share: float = 0.25, n_boot: int = 1000,
                 seed: int = 0, encoder: str = "embedded:minilm",
                 user_features: str = "embedding", max_pairs: int = MAX_PAIRS) -> dict:  # fmt: skip
    """Held-out pairwise accuracy of the light pair models on a store whose feedback is A/B
    choices only (no single-reply labels for ``store_levels``); at most ``max_pairs`` pairs,
    sampled, and without the per-item one-hot when it would not fit in memory."""
    from rlhf_persona.feedback.export import export_preference

    users, events = store.users(), [e for e in store.events() if e.get("reply")]
    if not events:
        raise UserError(f"{store!r}: no feedback events with a reply to evaluate")
    dataset, _ = export_preference(store)
    pairs = pairs_from(dataset.to_pandas().to_dict("records"))  # rows: faster than Dataset columns
    notes = []
    if len(pairs) > max_pairs:
        notes.append(f"sampled {max_pairs} of {len(pairs)} pairs (max_pairs)")
        keep = np.sort(np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False))
        pairs = pairs.subset(keep)
    n_items = len(set(pairs.chosen) | set(pairs.rejected))
    if features == "item_embedding" and 2 * len(pairs) * n_items * 8 > ONE_HOT_BYTES:
        notes.append(f"item one-hot of {n_items} items skipped (memory): embedding features")
        features = "embedding"
    train_idx, test_idx, ev_train = _split_pairs(pairs, events, split, test_share, seed)
    if not len(test_idx) or not len(train_idx):
        raise UserError(f"split {split!r}: {len(train_idx)} train / {len(test_idx)} test pairs")
    train_events = [e for e, keep in zip(events, ev_train, strict=True) if keep]
    report: dict = {"split": split, "users": len(users), "pairs": len(pairs),
                    "train_pairs": len(train_idx), "test_pairs": len(test_idx),
                    "features": features, "user_features": user_features,
                    "ceilings": NO_CEILINGS, "segmentations": {}, "notes": notes,
                    "metric": "within-user pairwise accuracy of A/B choices"}  # fmt: skip
    for option in options:
        segments = _segment(users, train_events, option, behaviour, k, seed)
        if isinstance(segments, str):
            report["segmentations"][option] = segments
            continue
        seg_pairs = pairs.subset(np.arange(len(pairs)))
        seg_pairs.segment = np.array([segments.get(u, -1) for u in pairs.user_ids])
        train, test = seg_pairs.subset(train_idx), seg_pairs.subset(test_idx)
        models = fit_levels(
            train,
            ReplyFeaturizer(features, dims, encoder),
            shrinkage,
            user_featurizer=ReplyFeaturizer(user_features, dims, encoder),
        )
        hits = {lvl: _hits(_margins(models[lvl], test, lvl == "user")) for lvl in LEVELS}
        res = bootstrap_ci(hits, np.array(test.user_ids), n_boot, seed)
        res["per_segment"] = _per_segment(hits, test.segment)
        res["worst_segment"] = {lvl: min(res["per_segment"][lvl].values()) for lvl in LEVELS}
        res["k"] = len(set(segments.values()))
        report["segmentations"][option] = res
    usable = [o for o in options if isinstance(report["segmentations"][o], dict)]
    if not usable:
        raise UserError(f"no usable segmentation among {list(options)}: {report['segmentations']}")
    report["levels"] = report["segmentations"][usable[0]]
    report["segmentation"] = usable[0]
    return report


def _hits(margin: np.ndarray) -> np.ndarray:
    return np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))


def _per_segment(hits: dict, segment: np.ndarray) -> dict:
    return {lvl: {int(s): float(h[segment == s].mean()) for s in np.unique(segment)}
            for lvl, h in hits.items()}  # fmt: skip
