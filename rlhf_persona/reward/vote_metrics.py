"""Per-vote and within-user pairwise accuracy, with bootstrap CIs that resample users.

* ``acc_vote``: share of held-out votes whose sign the score predicts (a user's agree-bias counts);
* ``acc_pair``: over each user's held-out (agree, disagree) pairs, the share the score orders
  right (ties ½) — computed from within-user ranks (Mann–Whitney), so no pair is materialised.

Users are resampled with all their votes (one user's votes are not independent). Below
``MIN_TEST_VOTES`` votes / ``MIN_TEST_PAIRS`` pairs / ``MIN_TEST_USERS`` users a metric gets a
warning and no CI: a 1-pair test set must not print ``acc 1.0 [1.0, 1.0]``.
"""

from __future__ import annotations

import numpy as np

MIN_TEST_VOTES = 100
MIN_TEST_PAIRS = 100
MIN_TEST_USERS = 10
METRICS = ("acc_vote", "acc_pair")


def vote_hits(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    return np.where(score == 0, 0.5, (np.sign(score) == y).astype(float))


def pair_hits(user: np.ndarray, y: np.ndarray, score: np.ndarray, n_users: int):
    """(ordered-right pairs, pairs) per user from tie-averaged ranks within each user."""
    order = np.lexsort((score, user))
    u, s, pos = user[order], score[order], (y[order] > 0).astype(float)
    n = len(order)
    new_tie = np.r_[True, (u[1:] != u[:-1]) | (s[1:] != s[:-1])]
    tie = np.cumsum(new_tie) - 1
    first_of_user = np.r_[True, u[1:] != u[:-1]]
    start = np.maximum.accumulate(np.where(first_of_user, np.arange(n), 0))
    rank = np.arange(n) - start + 1.0
    avg = np.bincount(tie, weights=rank) / np.bincount(tie)
    rank = avg[tie]
    n_pos = np.bincount(u, weights=pos, minlength=n_users)
    n_all = np.bincount(u, minlength=n_users).astype(float)
    rank_pos = np.bincount(u, weights=rank * pos, minlength=n_users)
    hits = rank_pos - n_pos * (n_pos + 1) / 2
    return hits, n_pos * (n_all - n_pos)


def per_user(user, y, score, n_users) -> dict:
    """Per metric: (hits per user, count per user)."""
    votes = (np.bincount(user, weights=vote_hits(y, score), minlength=n_users),
             np.bincount(user, minlength=n_users).astype(float))  # fmt: skip
    return {"acc_vote": votes, "acc_pair": pair_hits(user, y, score, n_users)}


def boot_weights(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_users) multiplicities of each user in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(n_users, size=(n_boot, n_users))
    out = np.zeros((n_boot, n_users), dtype=np.float32)
    np.add.at(out, (np.arange(n_boot)[:, None], draws), 1.0)
    return out


def _ci(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarise(stats: dict[str, dict], comparisons, n_boot: int = 1000, seed: int = 0):
    """``stats[model][metric] = (hits, counts)`` per user → accuracies, CIs and the CIs of the
    ``comparisons`` ((a, b) model pairs: a − b), plus the warnings of too-small test sets."""
    any_model = next(iter(stats.values()))
    users = np.flatnonzero(any_model["acc_vote"][1] > 0)
    weights = boot_weights(len(users), n_boot, seed)
    out: dict = {m: {} for m in METRICS}
    diffs: dict = {f"{a}-{b}": {} for a, b in comparisons}
    warnings = []
    for metric in METRICS:
        counts = any_model[metric][1][users]
        total, n_users = counts.sum(), int((counts > 0).sum())
        small = _too_small(metric, total, n_users)
        if small:
            warnings.append(small)
        boot_tot = weights @ counts if not small else None
        boot = {}
        for model, st in stats.items():
            hits = st[metric][0][users]
            acc = float(hits.sum() / total) if total else float("nan")
            entry = {"acc": round(acc, 4), "ci": None, "n": int(total)}
            if not small:
                boot[model] = (weights @ hits) / boot_tot
                entry["ci"] = _ci(boot[model])
            out[metric][model] = entry
        for a, b in comparisons:
            d = out[metric][a]["acc"] - out[metric][b]["acc"]
            ci = None if small else _ci(boot[a] - boot[b])
            diffs[f"{a}-{b}"][metric] = {"diff": round(d, 4), "ci": ci}
    return out, diffs, warnings


def _too_small(metric: str, total: float, n_users: int) -> str | None:
    need = MIN_TEST_VOTES if metric == "acc_vote" else MIN_TEST_PAIRS
    unit = "votes" if metric == "acc_vote" else "within-user pairs"
    if total < need or n_users < MIN_TEST_USERS:
        return (f"{metric}: only {int(total)} test {unit} from {n_users} users (minimum "
                f"{need} from {MIN_TEST_USERS}): accuracy shown without a CI; it is not a "
                "reliable estimate — import more feedback or raise the test share")  # fmt: skip
    return None
