"""Simulated users: populations, features, feedback noise model, oracle ceilings, envs, CLI."""

from __future__ import annotations

import copy
from datetime import datetime

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env
from scipy import integrate
from typer.testing import CliRunner

from rlhf_persona import styles
from rlhf_persona.simulation import (
    FEATURE_NAMES,
    FeedbackSimulator,
    PopulationError,
    load_population,
    oracle,
    parse_population,
    reply_features,
    sample_prompts,
    shipped_populations,
)
from rlhf_persona.simulation.features import FEATURE_INDEX
from rlhf_persona.simulation.population import segment_mean, segment_sd
from rlhf_persona.simulation.schema import CHANNELS, resolve_population_path
from rlhf_persona.simulation.user import sigmoid

EVENT_KEYS = {
    "event_id", "user_id", "kind", "prompt", "reply", "other_reply", "value", "reason_tags",
    "comment", "created_at",
}  # fmt: skip


@pytest.fixture(scope="module")
def four():
    return load_population("four_segments")


@pytest.fixture(scope="module")
def four_users(four):
    return four.sample_users(20_000, seed=0)


@pytest.fixture(scope="module")
def ref_pairs():
    return oracle.reference_pairs(3000, seed=0)


def _raw(name: str) -> dict:
    return yaml.safe_load(resolve_population_path(name).read_text())


def _z(observed: float, expected: float, n: int) -> float:
    """Binomial z-score of an observed rate."""
    return abs(observed - expected) / np.sqrt(expected * (1 - expected) / n)


# ------------------------------------------------------------------ populations


def test_shipped_populations_validate_and_overlap():
    assert {"two_opposed", "four_segments", "drift"} <= set(shipped_populations())
    for name in ("two_opposed", "four_segments", "drift"):
        pop = load_population(name)
        assert abs(sum(pop.shares) - 1) < 1e-9
        users = pop.sample_users(4000, seed=1)
        # Profiles reveal the segment only partly: better than always guessing the largest
        # segment, clearly short of certainty.
        acc = oracle.profile_segment_accuracy(users)
        assert max(pop.shares) + 0.05 < acc < 0.9, (name, acc)
    four = load_population("four_segments")
    assert len(four.segments) == 4
    assert min(four.shares) == pytest.approx(0.1)


def test_shares_and_individual_variation_match_yaml(four, four_users):
    n = len(four_users)
    counts = np.bincount(four_users.truth.segment, minlength=4)
    for s, seg in enumerate(four.segments):
        assert _z(counts[s] / n, seg.share, n) < 4, seg.name
        pref = four_users.truth.pref[four_users.truth.segment == s]
        np.testing.assert_allclose(pref.mean(0), segment_mean(seg), atol=0.05)
        np.testing.assert_allclose(pref.std(0), segment_sd(seg), rtol=0.08)
    # Contract shape of the public side.
    record = four_users.records()[0]
    assert set(record) == {"user_id", "profile"}
    profile = record["profile"]
    assert {"age_band", "occupation", "region", "interests", "sessions_per_week"} <= set(profile)
    assert isinstance(profile["sessions_per_week"], float)
    assert profile["interests"] and set(profile["interests"]) <= set(styles.TOPICS)


def test_channel_rates_match_yaml(four, four_users):
    sim = FeedbackSimulator(four_users, seed=3, embed=False)
    idx = np.arange(len(four_users))
    kinds = sim.draw_kinds(idx, pairwise=True)
    for s, seg in enumerate(four.segments):
        rows = four_users.truth.segment == s
        expected = (seg.channels or four.channels).probs()
        for c, name in enumerate(CHANNELS):
            if expected[c] > 0:
                assert _z((kinds[rows] == c).mean(), expected[c], rows.sum()) < 4, (seg.name, name)
    # Without a second reply pairwise is impossible; the other channels keep their proportions.
    single = sim.draw_kinds(idx, pairwise=False)
    assert not (single == CHANNELS.index("pairwise")).any()
    mix = four.channels
    rows = four_users.truth.segment == four.segment_names.index("hobbyists")  # default channels
    assert _z((single[rows] == 0).mean(), mix.thumbs / (1 - mix.pairwise), rows.sum()) < 4


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda d: d["segments"][0].update(share=0.3), "segments.share", "sum to 1"),
        (
            lambda d: d["segments"][1]["preference"].update(verbosity=1.0),
            "segments.1.preference",
            "unknown feature 'verbosity'",
        ),
        (
            lambda d: d["channels"].update(thumbs=-0.1, abstain=0.7),
            "channels.thumbs",
            "greater than or equal to 0",
        ),
        (lambda d: d["segments"][0].update(individual_sd=-1), "segments.0.individual_sd", ""),
        (lambda d: d["segments"][0].update(topics={"astrology": 1}), "segments.0.topics", ""),
        (lambda d: d.update(colour="blue"), "colour", "unknown key"),
        (lambda d: d["drift"][0].update(segment="nobody"), "drift.0.segment", "unknown"),
    ],
)
def test_invalid_population_names_file_and_field(tmp_path, edit, field, words):
    data = copy.deepcopy(_raw("drift"))
    edit(data)
    path = tmp_path / "bad_population.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PopulationError) as err:
        load_population(path)
    msg = str(err.value)
    assert "bad_population.yaml" in msg and field in msg and words in msg, msg


def test_unknown_population_name_lists_shipped():
    with pytest.raises(PopulationError, match="four_segments"):
        load_population("no_such_population")
    with pytest.raises(PopulationError, match="not found"):
        load_population("missing/dir/pop.yaml")


# ------------------------------------------------------------------ features

CASUAL_SHORT = "Hey, yeah totally gonna love it! Awesome! 😀🎉🔥 Wanna try?"
FORMAL_LONG = (
    "Certainly. Regarding the recipe, one should simmer the garlic slowly. Furthermore, it is "
    "advisable to add the spices late, and moreover the pasta should rest. In addition, the "
    "oven ought to be preheated; therefore, one should plan ahead. Consequently, the dish will "
    "be balanced and the flavours will develop fully over the course of the evening meal."
)
BULLETS = "- Add garlic early\n- Simmer the pasta sauce\n- Taste the spices"


def test_features_measure_the_style_axes():
    prompts = ["Can you help me with garlic?"] * 3
    x = reply_features(prompts, [CASUAL_SHORT, FORMAL_LONG, BULLETS], embed=False)
    assert x.shape == (3, len(FEATURE_NAMES)) and x.dtype == np.float32
    assert ((x >= 0) & (x <= 1)).all()
    f = FEATURE_INDEX
    casual, formal, bullets = x
    assert casual[f["length"]] < 0.3 < 0.9 < formal[f["length"]]
    assert casual[f["emoji"]] == 1 and formal[f["emoji"]] == 0
    assert casual[f["formality"]] == 0 and formal[f["formality"]] == 1
    assert casual[f["enthusiasm"]] >= 0.75 and formal[f["enthusiasm"]] == 0
    assert bullets[f["structure"]] == 1 and casual[f["structure"]] == 0
    assert casual[f["question"]] == 1 and formal[f["question"]] == 0
    # detail: cooking keywords in the formal reply, none in the casual one.
    assert formal[f["detail"]] == 1 and casual[f["detail"]] == 0
    # Unmeasured features sit at the neutral 0.5.
    assert (x[:, f["relevance"]] == 0.5).all() and (x[:, f["interest_match"]] == 0.5).all()
    match = reply_features(prompts[:2], [FORMAL_LONG] * 2, [["cooking"], ["law"]], embed=False)
    assert match[0, f["interest_match"]] == 1 and match[1, f["interest_match"]] == 0
    # Deterministic.
    np.testing.assert_array_equal(x, reply_features(prompts, [CASUAL_SHORT, FORMAL_LONG, BULLETS],
                                                    embed=False))  # fmt: skip


def test_relevance_feature_uses_minilm():
    from rlhf_persona.simulation import features

    prompt = "What is the best way to handle garlic in a pasta recipe?"
    on_topic = "Cook the garlic gently in oil before adding the pasta and simmer the sauce."
    off_topic = "Check the tenant contract clause about liability before you go to court."
    x = reply_features([prompt, prompt], [on_topic, off_topic], embed=True)
    rel = x[:, FEATURE_INDEX["relevance"]]
    assert rel[0] > 0.5 > rel[1] and rel[0] - rel[1] > 0.3
    # Cached by text hash: a second pass encodes nothing new and gives identical values.
    n_cached = len(features._EMBED_CACHE)
    np.testing.assert_array_equal(x, reply_features([prompt, prompt], [on_topic, off_topic]))
    assert len(features._EMBED_CACHE) == n_cached


# ------------------------------------------------------------------ feedback noise model


def test_feedback_follows_the_stated_noise_model(four, four_users, ref_pairs):
    fa, fb = ref_pairs
    n = len(fa)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, len(four_users), n)
    sim = FeedbackSimulator(four_users, seed=9, embed=False)
    # Thumbs: the up rate matches the oracle's expected thumbs-up rate.
    thumbs = sim.respond_features(idx, fa, kind="thumbs")
    expected_up = oracle.policy_value(four_users, idx, fa)["overall"]["thumbs_up_rate"]
    assert _z((thumbs.value == 1).mean(), expected_up, n) < 4
    # Pairwise: Bradley–Terry choice rate equals the mean true preference probability.
    pairs = sim.respond_features(idx, fa, fb, kind="pairwise")
    p = oracle.preference_probability(four_users, idx, fa, fb)
    assert abs((pairs.value == 1).mean() - p.mean()) < 4 * np.sqrt(0.25 / n)
    # Ratings: 1..5 and increasing in utility.
    ratings = sim.respond_features(idx, fa, kind="rating")
    assert set(np.unique(ratings.value)) <= {1, 2, 3, 4, 5}
    u = (four_users.truth.pref[idx] * (fa - 0.5)).sum(1)
    low, high = u < np.quantile(u, 0.25), u > np.quantile(u, 0.75)
    assert ratings.value[high].mean() > ratings.value[low].mean() + 1.0
    # Reason tags only on negative judgements, and they name what cost utility.
    tagged = np.zeros(n, dtype=bool)
    tagged[list(thumbs.tags)] = True
    assert (tagged & (thumbs.value == -1)).any() and not (tagged & (thumbs.value == 1)).any()


def test_reason_tags_name_the_costly_features():
    pop = load_population("two_opposed")
    users = pop.sample_users(400, seed=0)
    casual = np.flatnonzero(users.truth.segment == pop.segment_names.index("brief_casual"))
    x = reply_features(["Can you help me with garlic?"], [FORMAL_LONG], embed=False)
    sim = FeedbackSimulator(users, seed=0, embed=False)
    batch = sim.respond_features(casual, np.repeat(x, len(casual), 0), kind="thumbs")
    tags = [t for row in batch.tag_lists() for t in row]
    assert (batch.value == -1).mean() > 0.8 and tags
    assert {"too long", "too formal"} & set(tags)
    assert not {"too short", "too casual", "too many emoji"} & set(tags)


def test_events_have_the_store_contract_shape(four, four_users):
    idx = np.arange(60)
    prompts, _ = sample_prompts(four_users, idx, seed=0)
    replies = [CASUAL_SHORT, FORMAL_LONG, BULLETS] * 20
    others = [FORMAL_LONG, BULLETS, CASUAL_SHORT] * 20
    sim = FeedbackSimulator(four_users, seed=1, embed=False)
    events = sim.respond(idx, prompts, replies, others) + sim.respond(idx, prompts, replies)
    assert 80 < len(events) < 120  # abstentions leave no event
    assert len({e["event_id"] for e in events}) == len(events)
    for e in events:
        assert set(e) == EVENT_KEYS
        assert e["user_id"] in four_users.ids and e["kind"] in {"thumbs", "rating", "pairwise"}
        datetime.fromisoformat(e["created_at"])
        if e["kind"] == "pairwise":
            assert e["value"] in (1, -1) and e["other_reply"] in others
        else:
            assert e["other_reply"] is None
            assert e["value"] in ((1, -1) if e["kind"] == "thumbs" else (1, 2, 3, 4, 5))


def test_same_seed_same_users_prompts_and_feedback():
    pop = load_population("four_segments")

    def run(seed: int):
        users = pop.sample_users(300, seed)
        idx = np.arange(0, 300, 3)
        prompts, _ = sample_prompts(users, idx, seed)
        sim = FeedbackSimulator(users, seed, embed=False)
        return users, prompts, sim.respond(idx, prompts, [CASUAL_SHORT] * len(idx))

    (u1, p1, e1), (u2, p2, e2), (u3, p3, e3) = run(7), run(7), run(8)
    assert u1.records() == u2.records() and p1 == p2 and e1 == e2
    np.testing.assert_array_equal(u1.truth.pref, u2.truth.pref)
    assert u1.records() != u3.records() and p1 != p3
    assert {e["event_id"] for e in e1}.isdisjoint(e["event_id"] for e in e3)


def test_drift_moves_one_segment_after_its_round():
    pop = load_population("drift")
    users = pop.sample_users(500, seed=0)
    d = pop.drift[0]
    moved = users.truth.segment == pop.segment_names.index(d.segment)
    before, after = users.preferences(d.after_round), users.preferences(d.after_round + 1)
    np.testing.assert_array_equal(before, users.truth.pref)
    delta = after - before
    assert np.allclose(delta[~moved], 0)
    assert np.allclose(delta[moved, FEATURE_INDEX["emoji"]], d.shift["emoji"])
    means = oracle.segment_means(pop, round=d.after_round + 1)
    assert means[0, FEATURE_INDEX["emoji"]] == pytest.approx(
        segment_mean(pop.segments[0])[FEATURE_INDEX["emoji"]] + d.shift["emoji"]
    )


# ------------------------------------------------------------------ oracle


def test_two_opposed_pooled_ceiling_matches_closed_form(ref_pairs):
    """Closed form. With segments A, B of shares π, 1 − π, μ_B = −μ_A and equal individual
    variation, a pair with difference d gives Δu_B ~ −Δu_A in distribution, so
    q_B = P_B(a ≻ b) = 1 − q_A =: 1 − g. The pooled probability is π g + (1 − π)(1 − g); the
    pooled Bayes decision is right with probability max(q, 1 − q) = ½ + |2π − 1| · |g − ½| per
    pair, and the segment decision with ½ + |g − ½|. Averaging over pairs:
        pooled = ½ + |2π − 1| · (segment − ½),   which is exactly ½ for π = ½.
    """
    fa, fb = ref_pairs
    data = _raw("two_opposed")
    for share in (0.5, 0.7):
        data["segments"][0]["share"], data["segments"][1]["share"] = share, 1 - share
        pop = parse_population(data)
        ceil = oracle.expected_ceilings(pop, fa, fb)
        closed = 0.5 + abs(2 * share - 1) * (ceil["segment"] - 0.5)
        assert ceil["pooled"] == pytest.approx(closed, abs=1e-9)
        assert ceil["segment"] > 0.75
    # The quadrature behind g agrees with direct numerical integration.
    beta, seg = pop.rationality.pairwise, pop.segments[0]
    q = oracle.segment_probabilities(pop, fa[:3], fb[:3])
    for i in range(3):
        d = fa[i] - fb[i]
        m, s = segment_mean(seg) @ d, np.sqrt((segment_sd(seg) ** 2) @ (d**2))
        dens = lambda z, m=m, s=s: np.exp(-0.5 * ((z - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))  # noqa: E731
        g = integrate.quad(lambda z, dens=dens: sigmoid(beta * z) * dens(z), m - 12 * s, m + 12 * s)
        assert q[0, i] == pytest.approx(g[0], abs=1e-8)
        assert q[1, i] == pytest.approx(1 - g[0], abs=1e-8)


def test_two_opposed_simulated_choices_reach_the_ceilings(ref_pairs):
    """The oracle's ceilings are what predictors actually score on simulated choices."""
    fa, fb = ref_pairs
    pop = load_population("two_opposed")
    users = pop.sample_users(2000, seed=2)
    idx = np.random.default_rng(0).integers(0, len(users), len(fa))
    reps = 10
    choices = np.stack([
        FeedbackSimulator(users, seed=r, embed=False)
        .respond_features(idx, fa, fb, kind="pairwise").value == 1
        for r in range(reps)
    ])  # fmt: skip
    q = oracle.segment_probabilities(pop, fa, fb)
    seg_pick = q[users.truth.segment[idx], np.arange(len(idx))] >= 0.5
    pool_pick = np.asarray(pop.shares) @ q >= 0.5
    n = choices.size
    expected = oracle.bayes_accuracy(users, idx, fa, fb)
    for pick, level in ((seg_pick, "segment"), (pool_pick, "pooled")):
        observed = (choices == pick[None, :]).mean()
        assert _z(observed, expected[level], n) < 4, level
    assert _z((choices == pool_pick).mean(), 0.5, n) < 4


def test_four_segments_ceilings_order_and_minority_gap(four, four_users, ref_pairs):
    fa, fb = ref_pairs
    ceil = oracle.expected_ceilings(four, fa, fb)
    assert ceil["personal"] > ceil["segment"] + 0.03 > ceil["pooled"] + 0.06
    for name, c in ceil["per_segment"].items():
        assert c["personal"] > c["segment"] > c["pooled"], name
        assert 0.78 < c["segment"] < 0.92, name
    minority = ceil["per_segment"]["formal_experts"]
    assert minority["pooled"] < 0.5 and minority["segment"] - minority["pooled"] > 0.3
    # The pooled model serves the majority far better than the minority.
    majority = [c for n, c in ceil["per_segment"].items() if n != "formal_experts"]
    assert min(c["pooled"] for c in majority) > 0.65
    # The same order on sampled users (the ceilings a reward model's test set can reach).
    idx = np.random.default_rng(1).integers(0, len(four_users), len(fa))
    emp = oracle.bayes_accuracy(four_users, idx, fa, fb)
    assert emp["personal"] > emp["segment"] > emp["pooled"]
    assert abs(emp["segment"] - ceil["segment"]) < 0.03


def test_policy_value_prefers_the_segments_own_style(four, four_users):
    casual, formal = reply_features(["Explain garlic to me."] * 2, [CASUAL_SHORT, FORMAL_LONG],
                                    embed=False)  # fmt: skip
    idx = np.arange(len(four_users))
    v_casual = oracle.policy_value(four_users, idx, np.repeat(casual[None], len(idx), 0))
    v_formal = oracle.policy_value(four_users, idx, np.repeat(formal[None], len(idx), 0))
    cas, exp = v_casual["per_segment"], v_formal["per_segment"]
    assert cas["casual_young"]["thumbs_up_rate"] > exp["casual_young"]["thumbs_up_rate"] + 0.3
    assert exp["formal_experts"]["mean_utility"] > cas["formal_experts"]["mean_utility"] + 2
    assert cas["casual_young"]["n"] + cas["formal_experts"]["n"] < len(idx)


# ------------------------------------------------------------------ gymnasium


@pytest.mark.parametrize(
    "env_id", ["rlhf_persona/UserFeedback-v0", "rlhf_persona/PairwiseFeedback-v0"]
)
def test_check_env_passes(env_id):
    env = gym.make(env_id, embed=False, users=50)
    check_env(env.unwrapped, skip_render_check=True)


def test_gym_make_defaults_and_population_path():
    env = gym.make("rlhf_persona/UserFeedback-v0")
    assert env.unwrapped.population.name == "four_segments" and env.unwrapped.embed
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    path = resolve_population_path("two_opposed")
    env2 = gym.make("rlhf_persona/PairwiseFeedback-v0", population=str(path), embed=False)
    assert env2.unwrapped.population.name == "two_opposed"


def test_env_same_seed_same_episode():
    def episode(seed: int):
        env = gym.make("rlhf_persona/UserFeedback-v0", embed=False, feedback="rating")
        obs, _ = env.reset(seed=seed)
        out, done = [obs["user_id"], obs["prompt"]], False
        while not done:
            obs, reward, term, trunc, info = env.step(FORMAL_LONG)
            out += [obs["prompt"], reward, info["event"]]
            done = term or trunc
        return out

    first = episode(11)
    assert first == episode(11) and first != episode(12)
    assert len(first) == 2 + 3 * 5
    assert all(-1 <= r <= 1 for r in first[3::3])


def test_pairwise_env_reward_is_the_choice():
    env = gym.make("rlhf_persona/PairwiseFeedback-v0", population="two_opposed", embed=False)
    brief = env.unwrapped.population.segment_names.index("brief_casual")
    users = env.unwrapped.users
    uid = users.ids[int(np.flatnonzero(users.truth.segment == brief)[0])]
    wins = 0
    for seed in range(40):
        env.reset(seed=seed, options={"user_id": uid})
        _, reward, _, _, info = env.step((CASUAL_SHORT, FORMAL_LONG))
        assert info["event"]["kind"] == "pairwise" and reward == info["event"]["value"]
        wins += reward == 1
    assert wins >= 32  # a brief, casual user almost always picks the casual reply


def test_env_batched_evaluate_thousands():
    env = gym.make("rlhf_persona/UserFeedback-v0", embed=False, feedback="thumbs").unwrapped
    n = 3000
    idx = np.arange(n) % len(env.users)
    prompts, _ = sample_prompts(env.users, idx, seed=0)
    replies = [CASUAL_SHORT, FORMAL_LONG, BULLETS] * (n // 3)
    rewards, events = env.evaluate(idx, prompts, replies)
    assert rewards.shape == (n,) and set(np.unique(rewards)) == {-1.0, 1.0}
    assert len(events) == n and all(e["kind"] == "thumbs" for e in events)
    rewards2, _ = env.evaluate(idx, prompts, replies)
    np.testing.assert_array_equal(rewards, rewards2)


# ------------------------------------------------------------------ CLI


def test_simulate_cli_prints_summary_and_ceilings(tmp_path):
    from rlhf_persona.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["simulate", "--population", "four_segments", "--users", "500", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    for word in ("formal_experts", "personal", "pooled", "500 users", "interest_match"):
        assert word in result.output
    bad = tmp_path / "bad.yaml"
    data = _raw("two_opposed")
    data["segments"][0]["share"] = 0.9
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["simulate", "--population", str(bad)])
    assert isinstance(result.exception, PopulationError)
    assert "bad.yaml" in str(result.exception) and "segments.share" in str(result.exception)
