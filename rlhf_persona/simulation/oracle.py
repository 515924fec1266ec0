"""The oracle: what the hidden truth says about pairs and replies. Evaluation only.

Pairwise choices follow Bradley–Terry, ``P(a ≻ b) = σ(β Δu)`` with ``Δu = w · (x_a − x_b)``. A
user's weights are ``w = μ_segment + noise``, ``noise ~ N(0, diag(sd²))``, so for a fixed pair
``Δu ~ N(μ · d, Σ sd² d²)`` over the users of a segment and every expectation below is a 1-D
Gaussian integral, computed by quadrature to ~1e-10, not estimated by Monte Carlo.

Bayes-optimal pairwise accuracy (against the users' own noisy choices) for a predictor that knows

* the user (``personal``): ``E[max(p, 1 − p)]``, p the user's true probability;
* only the segment (``segment``): picks ``a`` iff ``q_s = E_{w ~ segment}[p] ≥ ½``;
* nothing (``pooled``): picks ``a`` iff ``Σ_s share_s q_s ≥ ½``.

Always personal ≥ segment ≥ pooled (more information cannot hurt a Bayes decision).
"""

from __future__ import annotations

import numpy as np

from rlhf_persona.simulation.features import FEATURE_INDEX, FEATURE_NAMES
from rlhf_persona.simulation.population import Users, rng_for, segment_mean, segment_sd
from rlhf_persona.simulation.schema import Population
from rlhf_persona.simulation.user import sigmoid, utility

STREAM_PAIRS = 4
LEVELS = ("personal", "segment", "pooled")
# Trapezoid rule on the standard normal over ±9 sd: the integrands (logistic of a Gaussian) are
# analytic in a strip, so the rule converges geometrically; error < 1e-10 for β·sd up to ~10.
_GRID = np.linspace(-9.0, 9.0, 721)
_GRID_W = np.exp(-0.5 * _GRID**2)
_GRID_W /= _GRID_W.sum()
_CHUNK = 4096


def _gauss_expect(fn, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """E[fn(z)] for z ~ N(mean, var), elementwise over 1-D arrays (chunked to bound memory)."""
    out = np.empty(len(mean))
    sd = np.sqrt(var)
    for i in range(0, len(mean), _CHUNK):
        z = mean[i : i + _CHUNK, None] + sd[i : i + _CHUNK, None] * _GRID[None, :]
        out[i : i + _CHUNK] = fn(z) @ _GRID_W
    return out


def segment_means(population: Population, round: int = 0) -> np.ndarray:
    """[S, F] segment mean preferences in force during ``round`` (drift applied)."""
    mu = np.stack([segment_mean(s) for s in population.segments])
    names = population.segment_names
    for d in population.drift:
        if round > d.after_round:
            for feat, delta in d.shift.items():
                mu[names.index(d.segment), FEATURE_INDEX[feat]] += delta
    return mu


def _segment_moments(population: Population, d: np.ndarray, round: int):
    """Mean and variance of Δu over each segment's users: two [S, n] arrays."""
    mu = segment_means(population, round)
    sd = np.stack([segment_sd(s) for s in population.segments])
    return mu @ d.T, (sd**2) @ (d**2).T


def preference_probability(
    users: Users, user_idx, features_a: np.ndarray, features_b: np.ndarray, round: int = 0
) -> np.ndarray:
    """True P(user prefers a over b) for each row (Bradley–Terry with the user's weights)."""
    idx = np.asarray(user_idx)
    pref = users.preferences(round)[idx]
    beta = users.population.rationality.pairwise
    return sigmoid(beta * (utility(pref, features_a) - utility(pref, features_b)))


def segment_probabilities(
    population: Population, features_a: np.ndarray, features_b: np.ndarray, round: int = 0
) -> np.ndarray:
    """[S, n]: P(a ≻ b) for a random user of each segment (individual noise integrated out)."""
    beta = population.rationality.pairwise
    mean, var = _segment_moments(population, features_a - features_b, round)
    flat = _gauss_expect(lambda z: sigmoid(beta * z), mean.ravel(), var.ravel())
    return flat.reshape(mean.shape)


def expected_ceilings(
    population: Population, features_a: np.ndarray, features_b: np.ndarray, round: int = 0
) -> dict:
    """Bayes ceilings over the whole population (exact expectation) for the given pairs.

    Returns ``{"personal", "segment", "pooled": float, "per_segment": {name: {level: float}}}``;
    per-segment figures are each predictor's accuracy on that segment's users.
    """
    beta = population.rationality.pairwise
    mean, var = _segment_moments(population, features_a - features_b, round)
    q = segment_probabilities(population, features_a, features_b, round)  # [S, n]
    personal = _gauss_expect(lambda z: sigmoid(beta * np.abs(z)), mean.ravel(), var.ravel())
    shares = np.asarray(population.shares)[:, None]
    pooled_pick_a = (shares * q).sum(0) >= 0.5
    per_level = {
        "personal": personal.reshape(q.shape).mean(1),
        "segment": np.maximum(q, 1 - q).mean(1),
        "pooled": np.where(pooled_pick_a[None, :], q, 1 - q).mean(1),
    }
    out: dict = {lvl: float((shares[:, 0] * per_level[lvl]).sum()) for lvl in LEVELS}
    out["per_segment"] = {
        name: {lvl: float(per_level[lvl][s]) for lvl in LEVELS}
        for s, name in enumerate(population.segment_names)
    }
    return out


def bayes_accuracy(
    users: Users, user_idx, features_a: np.ndarray, features_b: np.ndarray, round: int = 0
) -> dict:
    """Bayes ceilings on these exact (user, pair) rows, e.g. a reward model's test set.

    Same keys as ``expected_ceilings``; each figure is the expected accuracy, against the
    users' noisy choices, of the Bayes decision at that level of knowledge.
    """
    idx = np.asarray(user_idx)
    pop = users.population
    p = preference_probability(users, idx, features_a, features_b, round)
    q = segment_probabilities(pop, features_a, features_b, round)
    seg = users.truth.segment[idx]
    q_own = q[seg, np.arange(len(idx))]
    q_pool = np.asarray(pop.shares) @ q
    acc = {
        "personal": np.maximum(p, 1 - p),
        "segment": np.where(q_own >= 0.5, p, 1 - p),
        "pooled": np.where(q_pool >= 0.5, p, 1 - p),
    }
    out: dict = {lvl: float(acc[lvl].mean()) for lvl in LEVELS}
    out["per_segment"] = {
        name: {lvl: float(acc[lvl][seg == s].mean()) for lvl in LEVELS}
        for s, name in enumerate(pop.segment_names)
        if (seg == s).any()
    }
    return out


def policy_value(users: Users, user_idx, features: np.ndarray, round: int = 0) -> dict:
    """True mean utility and expected thumbs-up rate of replies, overall and per segment.

    ``features[i]`` is the reply user ``user_idx[i]`` received. Returns
    ``{"overall": {...}, "per_segment": {name: {"mean_utility", "thumbs_up_rate", "n"}}}``.
    """
    idx = np.asarray(user_idx)
    pop = users.population
    u = utility(users.preferences(round)[idx], features)
    up = sigmoid(pop.rationality.thumbs * (u - users.truth.threshold[idx]))
    seg = users.truth.segment[idx]

    def summary(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        if not n:
            return {"mean_utility": float("nan"), "thumbs_up_rate": float("nan"), "n": 0}
        return {
            "mean_utility": float(u[mask].mean()),
            "thumbs_up_rate": float(up[mask].mean()),
            "n": n,
        }

    return {
        "overall": summary(np.ones(len(idx), dtype=bool)),
        "per_segment": {n: summary(seg == s) for s, n in enumerate(pop.segment_names)},
    }


def reference_pairs(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature pairs of two random replies: every feature uniform on [0, 1], ``question`` 0/1.

    The reference for a population's ceilings when no policy replies are at hand.
    """
    rng = rng_for(seed, STREAM_PAIRS)
    a, b = rng.random((2, n, len(FEATURE_NAMES)))
    q = FEATURE_INDEX["question"]
    a[:, q], b[:, q] = a[:, q] < 0.5, b[:, q] < 0.5
    return a, b


def population_summary(population: Population, users: Users, n_pairs: int = 4000, seed: int = 0):
    """Per-segment table rows (share expected/observed, top preferences, ceilings) and totals."""
    fa, fb = reference_pairs(n_pairs, seed)
    ceil = expected_ceilings(population, fa, fb)
    counts = np.bincount(users.truth.segment, minlength=len(population.segments))
    rows = []
    for s, seg in enumerate(population.segments):
        mu = segment_mean(seg)
        top = np.argsort(-np.abs(mu))[:4]
        rows.append(
            {
                "name": seg.name,
                "share": seg.share,
                "observed_share": counts[s] / len(users),
                "preference": ", ".join(f"{FEATURE_NAMES[j]} {mu[j]:+.1f}" for j in top),
                **ceil["per_segment"][seg.name],
            }
        )
    return rows, ceil


def profile_segment_accuracy(users: Users) -> float:
    """Accuracy of the Bayes guess of each user's segment from the profile alone.

    Uses the categorical and numeric profile distributions (numeric as unclipped normals) and
    the shares; a value between the largest share and 1 means the profile reveals the segment
    only partly, so behaviour has information to add.
    """
    pop = users.population
    logp = np.tile(np.log(np.asarray(pop.shares, dtype=float)), (len(users), 1))
    for s, seg in enumerate(pop.segments):
        for key, dist in seg.profile.categorical.items():
            total = sum(dist.values())
            probs = np.array([dist.get(v, 0.0) / total for v in users.profile_columns[key]])
            logp[:, s] += np.log(np.maximum(probs, 1e-12))
        for key, num in seg.profile.numeric.items():
            x = np.asarray(users.profile_columns[key], dtype=float)
            sd = max(num.sd, 1e-6)
            logp[:, s] += -0.5 * ((x - num.mean) / sd) ** 2 - np.log(sd)
    return float((logp.argmax(1) == users.truth.segment).mean())
