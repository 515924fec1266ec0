"""Segmentation: features, K-means with stable ids, cold start, cards, persistence, store, CLI.

Data: users of ``envs/four_segments.yaml`` giving 20+ feedback events each (the simulator's
feedback on corpus-styled replies), and the two real Polis conversations. Hidden truth is read
only here, to score the segmentation.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from rlhf_persona.errors import UserError
from rlhf_persona.feedback import FeedbackStore
from rlhf_persona.feedback.importers import import_polis
from rlhf_persona.models.corpus import Style, make_reply
from rlhf_persona.segmentation import Segmenter, user_table_from_events, user_table_from_store
from rlhf_persona.segmentation.cluster import merge_small
from rlhf_persona.segmentation.data import fit_from_store
from rlhf_persona.simulation import FeedbackSimulator, load_population, sample_prompts
from rlhf_persona.styles import TOPICS

ROOT = Path(__file__).resolve().parents[1]
POLIS = Path("/work/shared/data/polis")
EVENTS_PER_USER = 30  # draws; some abstain, so every user ends with 20+ events


def simulate(n_users: int, seed: int, feedback_seed: int | None = None):
    """Users of four_segments and their feedback on replies of independently drawn styles."""
    users = load_population("four_segments").sample_users(n_users, seed)
    seed = seed if feedback_seed is None else feedback_seed
    rng = random.Random(seed)
    pool = {
        topic: [make_reply(Style.sample(rng), topic, rng.choice(kws), rng) for _ in range(120)]
        for topic, kws in TOPICS.items()
    }
    idx = np.repeat(np.arange(n_users), EVENTS_PER_USER)
    prompts, topics = sample_prompts(users, idx, seed)
    replies = [rng.choice(pool[t]) for t in topics]
    others = [rng.choice(pool[t]) for t in topics]
    events = FeedbackSimulator(users, seed=seed, embed=False).respond(idx, prompts, replies, others)
    return users, events


@pytest.fixture(scope="module")
def sim():
    users, events = simulate(400, seed=0)
    table = user_table_from_events(users.records(), events)
    return users, events, table


@pytest.fixture(scope="module")
def fitted(sim):
    _, _, table = sim
    return {f: Segmenter(k=4, features=f).fit(table) for f in ("profile", "behaviour", "both")}


def _ari(users, segmenter) -> float:
    return adjusted_rand_score(users.truth.segment, segmenter.labels_)


def _hidden_of(users, segmenter) -> dict[int, int]:
    """Segment id → hidden segment index, matched one-to-one by overlap (evaluation only)."""
    ids = sorted(segmenter.sizes_)
    overlap = np.array(
        [[np.sum((segmenter.labels_ == s) & (users.truth.segment == h)) for h in range(4)]
         for s in ids]
    )  # fmt: skip
    rows, cols = linear_sum_assignment(-overlap)
    return {ids[r]: int(c) for r, c in zip(rows, cols, strict=True)}


# --- quality against the hidden segments ----------------------------------------------------------


def test_every_user_has_twenty_plus_events(sim):
    _, _, table = sim
    assert table.n_feedback.min() >= 20


def test_profile_plus_behaviour_recovers_hidden_segments(sim, fitted):
    users = sim[0]
    ari = {f: _ari(users, s) for f, s in fitted.items()}
    print("ARI vs hidden segments:", {k: round(v, 3) for k, v in ari.items()})
    assert ari["both"] >= 0.9
    assert ari["both"] > ari["profile"]
    assert ari["both"] > ari["behaviour"]


def test_k_by_silhouette_stays_in_range(sim):
    seg = Segmenter(k=None, k_range=(2, 6)).fit(sim[2])
    assert 2 <= seg.k_ <= 6
    assert set(seg.silhouette_) == set(range(2, 7))
    assert seg.k_ == max(seg.silhouette_, key=seg.silhouette_.get)


# --- stable ids -----------------------------------------------------------------------------------


def test_ids_stay_stable_across_refits(sim, fitted):
    users, _, table = sim
    first = copy.deepcopy(fitted["both"])
    # Scramble the first model's ids so that "largest segment is 0" cannot explain a match.
    scrambled = {0: 7, 1: 3, 2: 9, 3: 5}
    first.segment_ids_ = np.array([scrambled[int(i)] for i in first.segment_ids_])
    first.labels_ = np.array([scrambled[int(i)] for i in first.labels_])
    perm = np.random.default_rng(1).permutation(len(table))
    second = Segmenter(k=4, random_state=11).fit(table.subset(perm), previous=first)
    assert set(second.segment_ids_.tolist()) == {3, 5, 7, 9}
    assert np.mean(second.labels_ == first.labels_[perm]) >= 0.97
    # Next round: the same users with new feedback, refitted again on top of the second model.
    _, events2 = simulate(400, seed=0, feedback_seed=1)
    third = Segmenter(k=4, random_state=5).fit(
        user_table_from_events(users.records(), events2), previous=second
    )
    agree = np.mean(third.labels_ == first.labels_)
    print("round-to-round id agreement:", round(agree, 3))
    assert agree >= 0.9


def test_new_segment_gets_a_fresh_id(sim, fitted):
    table = sim[2]
    grown = Segmenter(k=5, random_state=3).fit(table, previous=fitted["both"])
    ids = set(grown.segment_ids_.tolist())
    assert set(fitted["both"].segment_ids_.tolist()) < ids
    assert max(ids) == max(fitted["both"].segment_ids_) + 1


# --- tiny clusters --------------------------------------------------------------------------------


def test_tiny_cluster_merges_into_nearest_neighbour():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [1.5, 1.5]], dtype=np.float32)
    X = np.vstack(
        [rng.normal(c, 0.3, (n, 2)) for c, n in zip(centres, [50, 50, 50, 3], strict=True)]
    )
    labels = np.repeat(np.arange(4), [50, 50, 50, 3])
    merged_centroids, merged = merge_small(X.astype(np.float32), centres, labels, min_size=5)
    assert len(merged_centroids) == 3
    assert np.all(merged[-3:] == merged[0])  # joined the cluster at the origin
    assert np.bincount(merged).min() >= 5


def test_segmenter_never_keeps_a_segment_below_min_size(sim):
    seg = Segmenter(k=6, min_segment_size=50).fit(sim[2])  # the 10% minority has ~40 users
    assert len(seg.sizes_) < 6
    assert min(seg.sizes_.values()) >= 50


# --- assignment and cold start --------------------------------------------------------------------


def test_cold_start_from_profile_then_feedback(sim, fitted):
    users = sim[0]
    seg = fitted["both"]
    hidden = _hidden_of(users, seg)
    new_users, new_events = simulate(300, seed=7)
    truth = new_users.truth.segment
    cold = user_table_from_events(new_users.records(), [], stats=seg.behaviour_stats_)
    warm = user_table_from_events(new_users.records(), new_events, stats=seg.behaviour_stats_)
    cold_seg, cold_conf = seg.assign(cold)
    warm_seg, warm_conf = seg.assign(warm)
    acc_cold = np.mean([hidden[s] == t for s, t in zip(cold_seg, truth, strict=True)])
    acc_warm = np.mean([hidden[s] == t for s, t in zip(warm_seg, truth, strict=True)])
    chance = np.bincount(truth).max() / len(truth)  # always guessing the largest segment
    print(f"assignment accuracy: cold {acc_cold:.3f}, with feedback {acc_warm:.3f}, "
          f"chance {chance:.3f}")  # fmt: skip
    assert acc_cold > chance + 0.2
    assert acc_warm > acc_cold
    assert np.all((cold_conf > 0) & (cold_conf <= 1))
    assert warm_conf.mean() > cold_conf.mean()
    # No profile and no feedback: the segment shares are all there is.
    blank = user_table_from_events([{"user_id": "nobody", "profile": {}}], [])
    segment, confidence = seg.assign(blank)
    assert segment[0] == seg.segment_ids_[np.argmax(seg.prior_)]
    assert confidence[0] == pytest.approx(max(seg.prior_))


# --- cards ----------------------------------------------------------------------------------------

# How a persona text says that a segment rewards a feature going up (+) or down (-).
WORDS = {
    "length": ("long", "short"),
    "emoji": ("with emoji", "without emoji"),
    "formality": ("formal", "casual"),
    "enthusiasm": ("enthusiastic", "calm"),
    "structure": ("bullet", "prose"),
    "question": ("ending with a follow-up question", "without follow-up question"),
    "detail": ("detailed", "generic"),
    "interest_match": ("about their interests", "away from their interests"),
}


def test_cards_name_the_traits_segments_truly_prefer(sim, fitted):
    users = sim[0]
    seg = fitted["both"]
    population = yaml.safe_load((ROOT / "envs" / "four_segments.yaml").read_text())
    segments = population["segments"]
    hidden = _hidden_of(users, seg)
    for card in seg.cards_:
        truth = segments[hidden[card.segment_id]]
        pref = truth["preference"]
        measured = {f: w for f, w in pref.items() if f in WORDS}  # relevance is not measured
        top = sorted(measured, key=lambda f: -abs(measured[f]))[:4]
        traits = sorted(card.rewards + card.dislikes, key=lambda t: -abs(t["weight"]))
        assert traits, card
        strongest = traits[0]
        assert strongest["trait"] in top, (truth["name"], strongest, top)
        for t in traits:  # every trait the card names points the way the population says
            assert np.sign(t["weight"]) == np.sign(pref[t["trait"]]), (truth["name"], t)
        word = WORDS[strongest["trait"]][0 if strongest["weight"] > 0 else 1]
        reward_clause = card.persona_text.split("they reward")[1].split(" and dislike")[0]
        assert word in reward_clause, card.persona_text
        # Over-represented attributes really are more common in this segment (population file).
        for attr in card.attributes:
            if attr["kind"] != "categorical":
                continue
            dist = truth["profile"]["categorical"][attr["attribute"]]
            share_here = dist.get(attr["value"], 0) / sum(dist.values())
            overall = sum(
                s["share"]
                * s["profile"]["categorical"][attr["attribute"]].get(attr["value"], 0)
                / sum(s["profile"]["categorical"][attr["attribute"]].values())
                for s in segments
            )
            assert share_here > overall, (truth["name"], attr)
        assert card.size == seg.sizes_[card.segment_id]
    assert sum(c.share for c in seg.cards_) == pytest.approx(1.0, abs=1e-3)


# --- persistence ----------------------------------------------------------------------------------


def test_save_load_round_trip_and_version_check(sim, fitted, tmp_path):
    table = sim[2]
    seg = fitted["both"]
    seg.save(tmp_path / "seg")
    assert not list((tmp_path / "seg").glob("*.pkl"))
    loaded = Segmenter.load(tmp_path / "seg")
    s1, c1 = seg.assign(table)
    s2, c2 = loaded.assign(table)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_allclose(c1, c2, rtol=1e-6)
    assert [c.persona_text for c in loaded.cards_] == [c.persona_text for c in seg.cards_]
    meta_path = tmp_path / "seg" / "segmenter.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 999
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="version 999"):
        Segmenter.load(tmp_path / "seg")
    with pytest.raises(UserError, match="not a saved segmenter"):
        Segmenter.load(tmp_path / "nothing-here")


class Intruder:
    """A type no saved segmenter contains: loading a file with it must be refused."""


def test_load_refuses_unexpected_types(fitted, tmp_path):
    import skops.io as sio

    fitted["both"].save(tmp_path / "seg")
    sio.dump({"featurizer": Intruder(), "classifier": None}, tmp_path / "seg" / "featurizer.skops")
    with pytest.raises(UserError, match="refusing to load unexpected types.*Intruder"):
        Segmenter.load(tmp_path / "seg")


# --- the store ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_store(sim, tmp_path_factory):
    """A SQLite store with 80 simulated users and their events."""
    users, events, _ = sim
    keep = {r["user_id"] for r in users.records()[:80]}
    store = FeedbackStore(tmp_path_factory.mktemp("store") / "feedback.db")
    store.upsert_users([r for r in users.records() if r["user_id"] in keep])
    store.record_events([e for e in events if e["user_id"] in keep])
    return store


def _cfg(**fields):
    from rlhf_persona.config import SegmentationConfig

    return SegmentationConfig(**fields)


def test_fit_from_store_writes_assignments(small_store, tmp_path):
    seg = fit_from_store(small_store, _cfg(k=3), "round-1", out_dir=tmp_path / "seg")
    written = small_store.current_segments("round-1")
    assert len(written) == 80
    assert set(written.values()) == set(seg.sizes_)
    assert (tmp_path / "seg" / "segmenter.json").is_file()
    # The table read back from the store is the one computed from the same events.
    table = user_table_from_store(small_store)
    assert table.n_feedback.min() >= 20


def test_bad_input_raises_and_writes_nothing(small_store):
    with pytest.raises(UserError, match="too few users for k=20: 80 users, need at least 100"):
        fit_from_store(small_store, _cfg(k=20), "too-many-k")
    assert small_store.segment_assignments("too-many-k") == []


def test_no_usable_features_raises_and_writes_nothing(tmp_path):
    store = FeedbackStore(tmp_path / "empty.db")
    store.upsert_users([{"user_id": f"u{i}", "profile": {"age_band": "18-24"}} for i in range(30)])
    with pytest.raises(UserError, match="no usable features.*no user has usable feedback"):
        fit_from_store(store, _cfg(k=2, features="behaviour"), "nothing")
    with pytest.raises(UserError, match="no usable features.*profile attributes"):
        fit_from_store(store, _cfg(k=2, features="profile"), "nothing")
    assert store.segment_assignments("nothing") == []


# --- real data: Polis -----------------------------------------------------------------------------


@pytest.mark.parametrize("conversation", ["brexit-consensus", "15-per-hour-seattle"])
def test_polis_votes_recover_polis_groups(conversation, tmp_path):
    store = FeedbackStore(tmp_path / "polis.db")
    import_polis(store, POLIS / conversation)
    table = user_table_from_store(store, behaviour="items")
    # Polis clusters participants with at least 7 votes; so do we (the rest are still assigned).
    seg = Segmenter(features="behaviour", k=None, k_range=(2, 5), min_feedback=7).fit(table)
    group = {u["user_id"]: u["meta"].get("polis_group_id") for u in store.users()}
    polis = np.array([-1 if group[u] is None else group[u] for u in table.user_ids])
    placed = polis >= 0
    ari = adjusted_rand_score(polis[placed], seg.labels_[placed])
    rng = np.random.default_rng(0)
    baseline = [
        adjusted_rand_score(polis[placed], rng.permutation(seg.labels_[placed])) for _ in range(200)
    ]
    print(f"{conversation}: ARI with Polis groups {ari:.3f}, k={seg.k_}, permutation "
          f"baseline mean {np.mean(baseline):.3f} max {np.max(baseline):.3f}")  # fmt: skip
    assert ari >= 0.5
    assert ari > np.max(baseline) + 0.3
    assert seg.cards_[0].rewards and "text" in seg.cards_[0].rewards[0]


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_fit_show_assign(small_store, tmp_path):
    from typer.testing import CliRunner

    from rlhf_persona.cli import app

    db = small_store.url
    out = tmp_path / "seg"
    runner = CliRunner()
    args = ["segment", "fit", "--db", db, "--set", "segmentation.k=3", "--run-id", "cli-1"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "segments (run cli-1)" in result.output
    assert len(small_store.current_segments("cli-1")) == 80
    shown = runner.invoke(app, ["segment", "show", str(out)])
    assert shown.exit_code == 0 and "reward" in shown.output
    user = next(iter(small_store.current_segments("cli-1")))
    assigned = runner.invoke(app, ["segment", "assign", str(out), "--db", db, "--user", user])
    assert assigned.exit_code == 0 and user in assigned.output


def test_cli_too_few_users_exits_2_with_message(small_store, monkeypatch, capsys):
    from rlhf_persona import cli

    argv = ["rlhf-persona", "segment", "fit", "--db", small_store.url,
            "--set", "segmentation.k=40", "--run-id", "cli-bad"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    assert "too few users for k=40" in out.out + out.err
    assert "Traceback" not in out.out + out.err
    assert small_store.segment_assignments("cli-bad") == []
