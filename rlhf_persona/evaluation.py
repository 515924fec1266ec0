"""How well each policy serves each kind of user, judged by the simulator's hidden truth.

Evaluation is the only stage allowed to read ``users.truth`` (through ``simulation.oracle``).
For a fixed set of held-out (user, prompt) items it asks every policy for a reply and reports,
per true segment: mean utility and expected thumbs-up rate of the base, global and personalized
policies, the personalization gap (own segment's policy vs the other segments' policies for the
same users), KL from the base policy, the reward model's agreement with true utility (a
reward-hacking alarm) and its pairwise accuracy beside the Bayes ceiling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from rlhf_persona.policy.registry import BASE, GLOBAL
from rlhf_persona.simulation import oracle, reply_features, sample_prompts
from rlhf_persona.simulation.population import Users, rng_for

STREAM_EVAL = 101  # keeps held-out prompts apart from the collection prompts


@dataclass
class EvalItems:
    """Held-out (user, prompt) rows: user index, user id, assigned segment, prompt, and which of
    the user's held-out prompts the row is (0, 1, …)."""

    user_idx: np.ndarray
    user_ids: list[str]
    segments: np.ndarray
    prompts: list[str]
    prompt_no: np.ndarray

    def first_prompts(self, k: int | None) -> np.ndarray:
        """Row indices of each user's first ``k`` held-out prompts (every row when None)."""
        if k is None:
            return np.arange(len(self.prompts))
        return np.flatnonzero(self.prompt_no < k)

    def take(self, rows: np.ndarray) -> EvalItems:
        return EvalItems(
            self.user_idx[rows],
            [self.user_ids[j] for j in rows],
            self.segments[rows],
            [self.prompts[j] for j in rows],
            self.prompt_no[rows],
        )


def eval_items(
    users: Users, assignments: dict[str, int], per_segment: int, prompts_per_user: int, seed: int
) -> EvalItems:
    """Up to ``per_segment`` users of each true segment, each with held-out prompts."""
    rng = rng_for(seed, STREAM_EVAL)
    chosen = []
    for s in range(len(users.population.segments)):
        members = np.flatnonzero(users.truth.segment == s)
        take = min(per_segment, len(members))
        chosen.extend(rng.choice(members, size=take, replace=False).tolist())
    idx = np.repeat(np.array(sorted(chosen), dtype=np.int64), prompts_per_user)
    prompts, _ = sample_prompts(users, idx, seed=seed + STREAM_EVAL, round=0)
    ids = [users.ids[i] for i in idx]
    segs = np.array([assignments.get(u, -1) for u in ids], dtype=np.int64)
    prompt_no = np.tile(np.arange(prompts_per_user), len(chosen))
    return EvalItems(idx, ids, segs, prompts, prompt_no)


def _features(users: Users, items: EvalItems, replies: list[str], embed: bool) -> np.ndarray:
    interests = [users.interests[i] for i in items.user_idx]
    return reply_features(items.prompts, replies, interests, embed=embed)


def _by_true_segment(users: Users, items: EvalItems, features: np.ndarray, round: int) -> dict:
    value = oracle.policy_value(users, items.user_idx, features, round)["per_segment"]
    return {
        name: {"utility": v["mean_utility"], "thumbs_up": v["thumbs_up_rate"], "n": v["n"]}
        for name, v in value.items()
    }


def _personalization_gap(users, items, generator, embed, round, gen_kw, personalized) -> dict:
    """Per true segment: thumbs-up of own assigned segment's policy minus the mean of the
    other segments' policies, on the same users and prompts (``personalized``: the replies of
    each row's own segment policy, reused rather than generated again)."""
    segments = generator.registry.segments
    if len(segments) < 2:
        return {}
    up = {}
    for s in segments:
        replies = list(personalized)
        rows = [j for j, own in enumerate(items.segments) if int(own) != s]
        other = generator.generate([s] * len(rows), [items.prompts[j] for j in rows], **gen_kw)
        for j, reply in zip(rows, other, strict=True):
            replies[j] = reply
        up[s] = _row_thumbs(users, items, _features(users, items, replies, embed), round)
    own = np.array([up.get(int(s), up[segments[0]])[j] for j, s in enumerate(items.segments)])
    others = np.array(
        [np.mean([up[t][j] for t in segments if t != s]) for j, s in enumerate(items.segments)]
    )
    names = np.array(users.segment_names())[items.user_idx]
    return {n: float(np.mean(own[names == n] - others[names == n])) for n in np.unique(names)}


def _row_thumbs(users: Users, items: EvalItems, features: np.ndarray, round: int) -> np.ndarray:
    from rlhf_persona.simulation.user import sigmoid, utility

    idx = items.user_idx
    u = utility(users.preferences(round)[idx], features)
    beta = users.population.rationality.thumbs
    return sigmoid(beta * (u - users.truth.threshold[idx]))


def _gains(users: Users, items: EvalItems, feats: dict, round: int) -> dict:
    """Per true segment: the personalized policy's thumbs-up rate minus the base's and the
    global's on the same (user, prompt) rows, with a 95% normal-approximation interval of the
    paired mean and the row count."""
    up = {p: _row_thumbs(users, items, feats[p], round) for p in ("base", "global", "personalized")}
    names = np.array(users.segment_names())[items.user_idx]
    out: dict = {}
    for name in np.unique(names):
        rows = names == name
        out[str(name)] = {}
        for ref in ("base", "global"):
            diff = up["personalized"][rows] - up[ref][rows]
            half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            mean = float(diff.mean())
            out[str(name)][f"vs_{ref}"] = {"mean": mean, "ci95": [mean - half, mean + half],
                                           "n": int(rows.sum())}  # fmt: skip
    return out


def _assigned(users: Users, items: EvalItems) -> dict:
    """Per true segment: how many of its evaluated users each learned segment id holds (the
    report puts the matching segment card beside the row)."""
    names = np.array(users.segment_names())[items.user_idx]
    out: dict[str, dict[str, int]] = {}
    for _, name, seg in sorted(set(zip(items.user_ids, names, items.segments, strict=True))):
        counts = out.setdefault(str(name), {})
        counts[str(int(seg))] = counts.get(str(int(seg)), 0) + 1
    return out


def _reward_agreement(rm, users, items, replies, features, round) -> float:
    """Spearman correlation of the reward model's scores with true utility of the same replies."""
    from rlhf_persona.simulation.user import utility

    scores = rm.score(items.segments.tolist(), items.prompts, replies)
    true_u = utility(users.preferences(round)[items.user_idx], features)
    return float(spearmanr(scores, true_u).statistic)


def _reward_accuracy(rm, users, items, generator, embed, round, gen_kw, base_replies) -> dict:
    """Reward model's expected pairwise accuracy per true segment on two base replies per item
    (``base_replies`` and one more sample), beside the segment-knowing Bayes ceiling."""
    keys = [BASE] * len(items.prompts)
    a = base_replies
    b = generator.generate(keys, items.prompts, **{**gen_kw, "seed": gen_kw["seed"] + 8})
    fa, fb = _features(users, items, a, embed), _features(users, items, b, embed)
    p_true = oracle.preference_probability(users, items.user_idx, fa, fb, round)
    segs = items.segments.tolist()
    margin = rm.score(segs, items.prompts, a) - rm.score(segs, items.prompts, b)
    acc = np.where(margin > 0, p_true, np.where(margin < 0, 1 - p_true, 0.5))
    ceil = oracle.bayes_accuracy(users, items.user_idx, fa, fb, round)["per_segment"]
    names = np.array(users.segment_names())[items.user_idx]
    per_seg = {n: float(acc[names == n].mean()) for n in np.unique(names)}
    return {
        "per_segment_acc": per_seg,
        "ceiling": {n: float(c["segment"]) for n, c in ceil.items()},
        "worst_acc": min(per_seg.values()),
    }


def replies_to_generate(items: EvalItems, segments: list[int], rm: bool, best_of_n: int,
                        diagnostic_prompts: int | None) -> int:  # fmt: skip
    """How many replies ``evaluate_policies`` generates (the length of its progress bar)."""
    n = len(items.prompts)
    diag = items.segments[items.first_prompts(diagnostic_prompts)]
    gap = sum(int((diag != s).sum()) for s in segments) if len(segments) > 1 else 0
    best = n * best_of_n if best_of_n > 1 and rm else 0
    return 3 * n + best + gap + (len(diag) if rm else 0)


def evaluate_policies(
    users: Users,
    items: EvalItems,
    generator,
    rm=None,
    round: int = 0,
    embed: bool = True,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    best_of_n: int = 1,
    diagnostic_prompts: int | None = None,
) -> tuple[dict, dict]:
    """All evaluation figures for one round, and sample replies per true segment. With
    ``best_of_n`` > 1 (and ``rm``) also the personalized policies served best-of-n by ``rm``
    (a user-level reward scores per user): policy ``best_of_n`` beside the others.

    ``diagnostic_prompts``: the personalization gap and the reward model's pairwise accuracy
    (four more replies per row) and the KL from base (two forward passes per reply and policy)
    use only each user's first N held-out prompts (all when None), so that base / global /
    personalized get more rows for the same time."""
    gen_kw = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    n = len(items.prompts)
    replies = {
        "base": generator.generate([BASE] * n, items.prompts, **gen_kw),
        "global": generator.generate([GLOBAL] * n, items.prompts, **gen_kw),
        "personalized": generator.generate(items.segments.tolist(), items.prompts, **gen_kw),
    }
    best = None
    if best_of_n > 1 and rm is not None:
        from rlhf_persona.policy.best_of_n import best_of_n as serve_best_of_n

        best = serve_best_of_n(generator, rm, items.segments.tolist(), items.prompts,
                               items.user_ids, n=best_of_n, **gen_kw)  # fmt: skip
        replies["best_of_n"] = best.replies
    rows = items.first_prompts(diagnostic_prompts)
    diag = items.take(rows)

    def pick(policy: str) -> list[str]:  # the policy's replies to the diagnostic rows
        return [replies[policy][j] for j in rows]

    feats = {name: _features(users, items, r, embed) for name, r in replies.items()}
    per_policy = {name: _by_true_segment(users, items, f, round) for name, f in feats.items()}
    segments = {
        seg: {policy: per_policy[policy][seg] for policy in per_policy}
        for seg in per_policy["base"]
    }
    pers = [v["personalized"]["thumbs_up"] for v in segments.values()]
    metrics = {
        "segments": segments,
        "gain": _gains(users, items, feats, round),
        "assigned": _assigned(users, items),
        "spread": float(max(pers) - min(pers)),
        "personalization_gap": _personalization_gap(
            users, diag, generator, embed, round, gen_kw, pick("personalized")
        ),
        "kl": {
            "global": float(
                generator.kl_from_base([GLOBAL] * len(rows), diag.prompts, pick("global")).mean()
            ),
            "personalized": float(
                generator.kl_from_base(
                    diag.segments.tolist(), diag.prompts, pick("personalized")
                ).mean()
            ),
        },
    }
    if best is not None:
        metrics["best_of_n"] = {"n": best_of_n, "latency_s_per_request": best.latency_s / n}
    if rm is not None:
        metrics["reward_utility_corr"] = _reward_agreement(
            rm, users, items, replies["personalized"], feats["personalized"], round
        )
        metrics["reward"] = _reward_accuracy(
            rm, users, diag, generator, embed, round, gen_kw, pick("base")
        )
    return metrics, _samples(users, items, replies)


def _samples(users: Users, items: EvalItems, replies: dict, per_segment: int = 2) -> dict:
    names = np.array(users.segment_names())[items.user_idx]
    out: dict[str, list] = {}
    for j, name in enumerate(names):
        if len(out.setdefault(str(name), [])) < per_segment:
            out[str(name)].append(
                {"prompt": items.prompts[j], **{p: r[j] for p, r in replies.items()}}
            )
    return out


def drift_recovery(
    records: list[dict], segment: str, after_round: int, tolerance: float = 0.05
) -> dict:
    """Rounds the drifting ``segment`` takes to win back its satisfaction after its tastes move.

    ``records`` are the per-round evaluation records (``round.json``'s ``eval``). The reference
    is the personalized policy's thumbs-up rate in round ``after_round`` (the last round before
    the move); the segment has recovered in the first later round whose rate is within
    ``tolerance`` of it. ``rounds_to_recover`` counts rounds after the move (1 = the first
    round under the new tastes already recovered); None if it did not within the run.
    """
    rates = {r["round"]: r["segments"][segment]["personalized"]["thumbs_up"] for r in records}
    if after_round not in rates:
        return {"error": f"no evaluated round {after_round} before the drift"}
    before = rates[after_round]
    later = sorted(r for r in rates if r > after_round)
    recovered = next((r for r in later if rates[r] >= before - tolerance), None)
    return {
        "segment": segment,
        "before": before,
        "first_after": rates[later[0]] if later else None,
        "rounds_to_recover": None if recovered is None else recovered - after_round,
        "per_round": rates,
    }


def best_of_n_thumbs(users: Users, items: EvalItems, generator, reward, ns=(1, 4, 8),
                     round: int = 0, embed: bool = False, seed: int = 0,
                     max_new_tokens: int = 64, temperature: float = 1.0) -> dict:  # fmt: skip
    """Best-of-n serving with ``reward`` (e.g. the user-level one): per n, expected thumbs-up per
    true segment and the p50 latency of one request (one user, one prompt, n samples)."""
    import time

    from rlhf_persona.policy.best_of_n import best_of_n

    out = {}
    for n in ns:
        replies, latency = [], []
        for j, prompt in enumerate(items.prompts):  # one request at a time: serving latency
            start = time.perf_counter()
            res = best_of_n(generator, reward, [int(items.segments[j])], [prompt],
                            [items.user_ids[j]], n=n, max_new_tokens=max_new_tokens,
                            temperature=temperature, seed=seed + j)  # fmt: skip
            latency.append(time.perf_counter() - start)
            replies.extend(res.replies)
        value = oracle.policy_value(users, items.user_idx, _features(users, items, replies, embed),
                                    round)  # fmt: skip
        out[n] = {
            "thumbs_up": value["overall"]["thumbs_up_rate"],
            "per_segment": {k: v["thumbs_up_rate"] for k, v in value["per_segment"].items()},
            "p50_latency_s": float(np.median(latency)),
        }
    return out


def run_round_records(run_dir, rounds: int) -> tuple[list[dict], dict[str, float]]:
    """A finished run's ``round_<r>/round.json`` records and its stage times (stage → seconds,
    summed over the rounds), as the benchmarks report them."""
    records = [json.loads((Path(run_dir) / f"round_{r}" / "round.json").read_text())
               for r in range(rounds)]  # fmt: skip
    stage_s: dict[str, float] = {}
    for rec in records:
        for stage, secs in rec["stage_s"].items():
            stage_s[stage] = round(stage_s.get(stage, 0.0) + secs, 2)
    return records, stage_s


def acceptance_checks(record: dict, population, min_gain: float = 0.15,
                      min_minority_gain: float = 0.2) -> dict:  # fmt: skip
    """The closed loop's claim on one round's evaluation record (``round.json``'s ``eval``):
    every true segment's personalized thumbs-up rate ≥ base + ``min_gain`` and ≥ the global
    policy's, and the smallest segment (the minority) gains ≥ ``min_minority_gain`` over base.

    Returns the rates per segment (base / global / personalized), the minority and its gain, and
    ``checks`` (name → bool)."""
    thumbs = {
        seg: {p: round(v[p]["thumbs_up"], 4) for p in ("base", "global", "personalized")}
        for seg, v in record["segments"].items()
    }
    shares = population.shares
    minority = population.segments[min(range(len(shares)), key=shares.__getitem__)].name
    gain = (
        thumbs[minority]["personalized"] - thumbs[minority]["base"] if minority in thumbs else None
    )
    return {
        "thumbs_up": thumbs,
        "minority_segment": minority,
        "minority_gain": None if gain is None else round(gain, 4),
        "checks": {
            f"personalized_ge_base_plus_{min_gain}": all(
                v["personalized"] >= v["base"] + min_gain for v in thumbs.values()
            ),
            "personalized_ge_global": all(
                v["personalized"] >= v["global"] for v in thumbs.values()
            ),
            f"minority_gain_ge_{min_minority_gain}": gain is not None and gain >= min_minority_gain,
        },
    }
