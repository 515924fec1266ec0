"""Pointwise vote levels, baselines and metrics (issue 19): correctness on small exact cases,
levels vs baselines on a planted low-rank vote matrix, small-test warnings, memory guard, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlhf_persona.errors import UserError
from rlhf_persona.reward.vote_eval import evaluate_votes
from rlhf_persona.reward.vote_metrics import pair_hits, summarise
from rlhf_persona.reward.vote_models import fit_groups
from rlhf_persona.reward.votes import VoteData, check_memory, synthetic_votes, votes_from_events

POLIS = Path("/work/shared/data/polis")


def test_pair_hits_equal_brute_force_with_ties():
    rng = np.random.default_rng(0)
    user = rng.integers(5, size=200)
    y = np.where(rng.random(200) < 0.5, 1.0, -1.0)
    score = rng.integers(4, size=200).astype(float)  # many ties: each counts one half
    hits, n = pair_hits(user, y, score, 5)
    for u in range(5):
        pos, neg = score[(user == u) & (y > 0)], score[(user == u) & (y < 0)]
        diff = pos[:, None] - neg[None, :]
        assert n[u] == diff.size
        assert hits[u] == pytest.approx((diff > 0).sum() + 0.5 * (diff == 0).sum())


def test_fit_groups_is_the_map_logistic_fit_per_group():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    group, x = rng.integers(3, size=600), rng.normal(size=(600, 2))
    y = np.where(rng.random(600) < 1 / (1 + np.exp(-(x @ [1.5, -1.0]))), 1.0, -1.0)
    theta = fit_groups(group, x, y, np.zeros(600), 2.0, 3, iters=30)
    for g in range(3):  # sklearn: C = 1 / λ, no intercept
        ref = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-10).fit(
            x[group == g], y[group == g]
        )
        assert np.allclose(theta[g], ref.coef_[0], atol=1e-4)


@pytest.fixture(scope="module")
def synthetic_report():
    votes, item_x = synthetic_votes(400, 150, 24_000, seed=0)
    return evaluate_votes(votes, item_x, split="item", n_boot=200, seed=0)


def test_levels_beat_baselines_on_planted_low_rank_votes(synthetic_report):
    lv = synthetic_report["levels"]
    for metric in ("acc_vote", "acc_pair"):
        acc = {m: lv[metric][m]["acc"] for m in lv[metric]}
        print(metric, acc)
        assert acc["global"] >= acc["ridge"] - 0.005
        assert acc["segment"] > acc["global"] and acc["segment"] >= acc["pca_clusters"]
        assert acc["user"] > acc["segment"] and acc["user"] >= acc["knn_users"]
    # A user's agree-bias counts per vote but cancels within a user's pairs.
    assert lv["acc_pair"]["user_intercept"]["acc"] == lv["acc_pair"]["global"]["acc"]
    assert lv["diffs"]["user-global"]["acc_vote"]["ci"][0] > 0
    assert synthetic_report["behaviour"]["mode"] == "items"
    # Stacked on validation votes: mixture weights over [own level, kNN, PCA] / [own level, PCA],
    # the own level carrying most of the weight on planted low-rank votes.
    stack = lv["params"]["stack"]
    assert len(stack["user"]) == 3 and len(stack["segment"]) == 2
    for weights in stack.values():
        assert sum(weights) == pytest.approx(1.0, abs=1e-3) and min(weights) >= 0
        assert weights[0] > 0.5
    # The segment level mixes the segmentations (k) by weights stacked on validation votes.
    seg_params = lv["params"]["segment"]
    assert sum(seg_params["mixture_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    assert set(seg_params["mixture_weights"]) <= set(seg_params["val_loss_by_k"])


def test_stack_weights_a_mixture_by_held_out_votes():
    from rlhf_persona.reward.vote_eval import stack_apply, stack_fit, stack_inputs

    rng = np.random.default_rng(0)
    y = rng.choice([-1.0, 1.0], 400)
    good = 2.0 * y + rng.normal(0, 1, 400)  # a level's logit that knows the votes
    noise = rng.uniform(-1, 1, 400)  # a baseline's mean vote that does not
    weights = stack_fit(stack_inputs(good, noise), y)
    assert weights.sum() == pytest.approx(1.0) and weights.min() >= 0 and weights[0] > 0.9
    stacked = stack_apply(weights, stack_inputs(good, noise))
    assert (np.sign(stacked) == y).mean() > 0.9
    # An anti-correlated baseline gets no negative weight: it is simply left out.
    assert stack_fit(stack_inputs(good, -y * 0.9), y)[1] < 0.01
    # Too few validation votes: the level alone.
    assert stack_fit(stack_inputs(good[:20], noise[:20]), y[:20]).tolist() == [1.0, 0.0]


def test_new_users_placed_from_few_shots():
    from rlhf_persona.reward.vote_eval import fit_segment_level
    from rlhf_persona.reward.vote_models import GlobalVoteModel, UserFactorModel, vote_folds

    votes, item_x = synthetic_votes(300, 100, 15_000, seed=2)
    new = np.arange(250, 300)  # users unseen in training, then placed from 20 votes each
    is_new = np.isin(votes.user, new)
    first = np.zeros(len(votes), bool)
    for u in new:
        first[np.flatnonzero(votes.user == u)[:20]] = True
    train = votes.subset(~is_new)
    folds = vote_folds(train, 5, 0)
    glob = GlobalVoteModel().fit(train, item_x, folds)
    seg_model, _, _ = fit_segment_level(glob, train, ([{}] * 300, "behaviour", "items", 4, 0),
                                        item_x, folds, 0)  # fmt: skip
    user = UserFactorModel(seg_model).fit(train, item_x)
    before = user.theta_.copy()
    unplaced = seg_model.main.posterior_[new].copy()
    test = votes.subset(is_new & ~first)
    z0 = user.logit(test.user, test.item)
    user.place(votes.subset(first), new)
    assert np.array_equal(user.theta_[:250], before[:250])  # others untouched
    # place() moved the new users' segment posteriors off the segment shares (no votes).
    assert np.allclose(unplaced, unplaced[0])
    placed = seg_model.main.posterior_[new]
    assert np.abs(placed - unplaced).max() > 0.5 and np.allclose(placed.sum(1), 1)
    acc0 = (np.sign(z0) == test.y).mean()
    acc1 = (np.sign(user.logit(test.user, test.item)) == test.y).mean()
    print("new users: before", acc0, "after 20 shots", acc1)
    assert acc1 > acc0 + 0.03


def test_tiny_test_set_warns_and_has_no_ci():
    events = [{"user_id": f"u{u}", "kind": "thumbs", "prompt": "q", "reply": f"s{i}",
               "value": 1 if (u + i) % 3 else -1}
              for u in range(16) for i in range(12)]  # fmt: skip
    votes = votes_from_events(events)
    item_x = np.random.default_rng(0).normal(size=(votes.n_items, 4))
    report = evaluate_votes(votes, item_x, split="item", k=2, n_boot=50)
    assert any("without a CI" in w for w in report["warnings"])
    assert report["levels"]["acc_vote"]["user"]["ci"] is None


def test_summarise_one_pair_gives_warning_not_a_perfect_ci():
    stats = {m: {"acc_vote": (np.array([1.0]), np.array([1.0])),
                 "acc_pair": (np.array([1.0]), np.array([1.0]))} for m in ("a", "b")}  # fmt: skip
    accs, diffs, warnings = summarise(stats, [("a", "b")], n_boot=10)
    assert accs["acc_pair"]["a"] == {"acc": 1.0, "ci": None, "n": 1}
    assert len(warnings) == 2 and diffs["a-b"]["acc_pair"]["ci"] is None


def test_memory_guard_is_a_clear_error():
    votes = VoteData(np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1),
                     [f"u{i}" for i in range(50_000)], [f"s{i}" for i in range(20_000)],
                     ["q"] * 20_000)  # fmt: skip
    with pytest.raises(UserError, match="--max-votes"):
        check_memory(votes, 4.0, items_mode=True)  # 50k × 20k dense table: ~22 GiB
    check_memory(votes, 4.0, items_mode=False)


def test_cli_reward_personal_on_polis(tmp_path):
    from typer.testing import CliRunner

    from rlhf_persona.cli import app
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.feedback.importers import import_polis

    db = tmp_path / "polis.db"
    import_polis(FeedbackStore(db), POLIS / "15-per-hour-seattle")
    out = tmp_path / "personal.json"
    args = ["reward", "personal", "--db", str(db), "--segmentation", "behaviour", "--out", str(out),
            "--set", f"run.runs_dir={tmp_path}"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "behaviour: items" in result.output and "knn_users" in result.output
    assert out.is_file()
    small = CliRunner().invoke(app, args + ["--max-gb", "0.0001"])
    assert isinstance(small.exception, UserError) and "--max-votes" in str(small.exception)


def test_store_with_ab_choices_only_uses_sampled_pair_models(tmp_path):
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.reward.personal_eval import store_levels

    store = FeedbackStore(tmp_path / "ab.db")
    rng = np.random.default_rng(0)
    replies = [f"Reply {i}: " + ("short." if i % 2 else "a much longer, detailed answer " * 3)
               for i in range(12)]  # fmt: skip
    events = []
    for u in range(20):
        likes_long = u % 2 == 0
        for n in range(30):
            a, b = rng.choice(12, 2, replace=False)
            long_a = len(replies[a]) > len(replies[b])
            events.append({"event_id": f"e{u}-{n}", "user_id": f"u{u}", "kind": "pairwise",
                           "prompt": "q", "reply": replies[a], "other_reply": replies[b],
                           "value": 1 if long_a == likes_long else -1})  # fmt: skip
    store.record_events(events, create_users=True)
    report = store_levels(store, split="item", options=("behaviour",), n_boot=50,
                          encoder="embedded:tiny-test", max_pairs=400)  # fmt: skip
    assert report["metric"].startswith("within-user pairwise")
    assert report["notes"] and "sampled 400 of" in report["notes"][0]
    assert report["pairs"] == 400 and report["test_pairs"] > 0


def test_segment_posterior_mixes_few_vote_users_and_places_many_vote_users():
    """Soft placement: a user with no votes gets the segment shares, one with many votes the
    planted segment; users placed from 2 votes predict their other votes better as a mixture
    over segments than pinned to the likeliest one (log loss)."""
    from rlhf_persona.reward.vote_models import (
        GlobalVoteModel,
        SegmentVoteModel,
        softplus,
        vote_folds,
    )

    votes, item_x = synthetic_votes(500, 120, 30_000, seed=3)
    planted = np.asarray(votes.report["planted_segments"])
    few = np.arange(400, 500)  # users keeping 2 training votes each
    shots = np.zeros(len(votes), bool)
    for u in few:
        shots[np.flatnonzero(votes.user == u)[:2]] = True
    is_few = np.isin(votes.user, few)
    train, test = votes.subset(~is_few | shots), votes.subset(is_few & ~shots)
    seg = np.where(np.arange(500) < 400, planted, -1)  # few-vote users: not assigned
    folds = vote_folds(train, 5, 0)
    glob = GlobalVoteModel().fit(train, item_x, folds)
    soft = SegmentVoteModel(glob).fit(train, seg, item_x, folds)

    shares = np.bincount(planted[:400], minlength=4) + 1.0
    no_votes = soft.segment_posterior(train.subset(train.user < 400))[few]
    assert np.allclose(no_votes, shares / shares.sum())
    many = np.bincount(train.user, minlength=500) >= 40
    assert (soft.posterior_[many].argmax(1) == planted[many]).mean() > 0.9
    assert soft.posterior_[few].max(1).mean() < 0.9  # two votes do not settle a segment

    pinned = seg.copy()
    pinned[few] = soft.segments_[soft.posterior_[few].argmax(1)]
    hard = SegmentVoteModel(glob, soft=False).fit(train, pinned, item_x, folds)

    def loss(model):
        return float(softplus(-test.y * model.logit(test.user, test.item)).mean())

    print("few-vote users' log loss: mixture", loss(soft), "pinned", loss(hard))
    assert loss(soft) < loss(hard) - 0.01


def test_mixture_weights_favour_the_candidate_that_predicts_held_out_votes():
    from rlhf_persona.reward.vote_models import mixture_weights

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.1, 0.9, 2000)
    y = rng.random(2000) < truth
    good = np.where(y, truth, 1 - truth)  # probability of the observed vote
    flat = np.full(2000, 0.5)
    w = mixture_weights(np.array([flat, good, flat]))
    assert w.sum() == pytest.approx(1.0) and w[1] > 0.8
    w_same = mixture_weights(np.array([good, good]))
    assert np.allclose(w_same, 0.5)


def test_validation_like_the_user_split_holds_out_half_of_some_users():
    from rlhf_persona.reward.vote_eval import validation_like
    from rlhf_persona.reward.vote_models import validation_mask

    votes, _ = synthetic_votes(400, 60, 12_000, seed=4)
    val = validation_like(votes, "user", 0)
    held_users = np.unique(votes.user[val])
    assert 0.2 < len(held_users) / 400 < 0.4  # about 30% of the users …
    share = val[np.isin(votes.user, held_users)].mean()
    assert 0.4 < share < 0.6  # … each keeping about half of their votes for training
    assert np.array_equal(validation_like(votes, "item", 0), validation_mask(votes, 0))
