"""Per-user residuals, real-data (Polis) evaluation with CIs, deletion, best-of-n serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rlhf_persona.config import RewardConfig
from rlhf_persona.reward.personal_eval import few_shot, fit_levels, sim_levels, store_levels
from rlhf_persona.reward.user_level import ReplyFeaturizer, UserLevelReward

POLIS = Path("/work/shared/data/polis")


@pytest.fixture(scope="module")
def split():
    from rlhf_persona.reward.simulate import simulate_split

    cfg = RewardConfig(eval_labels_per_user=40, eval_test_pairs_per_user=10, eval_prompts=90)
    return simulate_split("four_segments", 120, cfg, seed=0)


@pytest.fixture(scope="module")
def levels(split):
    return fit_levels(split.preference_dataset(), ReplyFeaturizer("reply"), 5.0)


def test_user_level_beats_segment_ceiling(split, levels):
    acc = sim_levels(split, levels, min_labels=30)
    print("sim_acc", acc)
    assert acc["segment"] <= acc["segment_ceiling"] + 0.01  # no segment model passes it
    assert acc["user"] > acc["segment_ceiling"]
    assert acc["personal_ceiling"] - acc["user"] < acc["personal_ceiling"] - acc["segment"]
    assert acc["global"] < acc["segment"]


def test_few_shot_curve(split, levels):
    curve = few_shot(split, levels, (0, 5, 20, 50))
    print("few_shot", curve)
    assert curve[0]["user"] == pytest.approx(curve[0]["segment"])  # no labels: the segment
    assert curve[50]["user"] > curve[50]["segment"]
    assert curve[50]["user"] > curve[0]["user"]


def test_residuals_save_load_update_and_delete(split, levels, tmp_path):
    from rlhf_persona.feedback import FeedbackStore

    user = levels["user"]
    pairs = split.seen.subset(np.arange(40))
    ids = [split.users.ids[u] for u in pairs.user_idx]
    segs = split.segments(pairs).tolist()
    before = user.score(segs, pairs.prompts, pairs.reply_a, user_ids=ids)
    user.save(tmp_path / "ul")
    again = UserLevelReward.load(tmp_path / "ul")
    assert np.allclose(again.score(segs, pairs.prompts, pairs.reply_a, user_ids=ids), before)
    # A new user starts at their segment: the residual is exactly zero.
    seg_only = again.score(segs, pairs.prompts, pairs.reply_a)
    assert np.allclose(again.score(segs, pairs.prompts, pairs.reply_a, ["new"] * 40), seg_only)
    # Deleting a user in the store removes their residual on sync.
    store = FeedbackStore(tmp_path / "fb.db")
    victim = store.upsert_user("victim")
    again.update_user(victim, [{"prompt": "p", "chosen": "Sure! 😀", "rejected": "No.",
                                "user_id": victim, "segment_id": segs[0]}])  # fmt: skip
    assert victim in again.residuals_
    store.delete_user(victim)
    assert again.sync_deleted(store) == [victim]
    assert victim not in again.residuals_


@pytest.mark.parametrize("conversation", ["brexit-consensus", "15-per-hour-seattle"])
def test_polis_levels_with_cis(conversation, tmp_path):
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.feedback.importers import import_polis

    store = FeedbackStore(tmp_path / "polis.db")
    import_polis(store, POLIS / conversation)
    report = store_levels(store, split="item", options=("profile", "behaviour"), n_boot=400)
    lv = report["levels"]
    print(conversation, {m: {k: lv[m][k]["acc"] for k in lv[m]} for m in ("acc_vote", "acc_pair")})
    assert report["segmentations"]["profile"].startswith("unavailable")
    assert report["ceilings"].startswith("unavailable")
    assert report["behaviour"]["mode"] == "items"  # votes on shared statements: chosen from data
    assert not report["warnings"]
    for metric in ("acc_vote", "acc_pair"):
        for model in ("global", "segment", "user", "ridge", "pca_clusters", "knn_users"):
            lo, hi = lv[metric][model]["ci"]
            assert lo <= lv[metric][model]["acc"] <= hi and 0.6 < lv[metric][model]["acc"] <= 1
        # Each level at least matches its simple rival within the CI of the difference.
        for pair in ("global-ridge", "segment-pca_clusters", "user-knn_users", "user-global"):
            assert lv["diffs"][pair][metric]["ci"][1] >= 0, (pair, metric)
    assert lv["acc_vote"]["segment"]["acc"] > lv["acc_vote"]["global"]["acc"]
    assert set(lv["worst_segment"]) == {"global", "segment", "user"}


def test_best_of_n_raises_thumbs_up(split, levels, tiny_test_path, tmp_path):
    from rlhf_persona.evaluation import best_of_n_thumbs, eval_items
    from rlhf_persona.policy.generate import PolicyGenerator
    from rlhf_persona.policy.registry import AdapterRegistry

    assign = {split.users.ids[i]: int(s) for i, s in enumerate(split.segment_of)}
    items = eval_items(split.users, assign, 3, 2, seed=0)
    gen = PolicyGenerator(AdapterRegistry(tmp_path / "reg", str(tiny_test_path)), device="cpu")
    res = best_of_n_thumbs(split.users, items, gen, levels["user"], ns=(1, 4, 8),
                           max_new_tokens=32)  # fmt: skip
    print("best_of_n", res)
    # 6 replies per segment: the overall rate must rise clearly, and most segments with it (on
    # two builds of the tiny model: +.24 and +.30 overall; 4 of 4 and 3 of 4 segments).
    assert res[8]["thumbs_up"] > res[1]["thumbs_up"] + 0.15
    rose = [seg for seg, up in res[1]["per_segment"].items() if res[8]["per_segment"][seg] > up]
    assert len(rose) >= len(res[1]["per_segment"]) - 1, rose
    assert res[8]["p50_latency_s"] > 0
