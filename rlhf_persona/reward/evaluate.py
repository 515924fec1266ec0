"""Per-segment evaluation of reward models against the simulator's truth.

For a held-out ``PairSet`` a reward model predicts ``a ≻ b`` when ``r_a > r_b``. Reported per
*true* segment (the population's, which the ceilings are defined over):

* ``acc`` — expected pairwise accuracy against the users' own noisy choices,
  ``mean(p if a predicted else 1 − p)`` with ``p`` the user's true ``P(a ≻ b)``: the same
  quantity as the Bayes ceilings, without the sampling noise of one draw per pair;
* ``acc_observed`` — accuracy against the one sampled choice per pair (what real data gives);
* ``ceiling`` — Bayes accuracy of a predictor that knows the user's segment but not the user
  (``oracle.bayes_accuracy``: "segment"); ``pooled`` — of one that knows nothing;
* ``gap_closed`` — ``(acc − acc_global) / (ceiling − acc_global)``, given the global model's
  accuracy on the same rows;
* ``controversial_acc`` — accuracy on the pairs the segments disagree on (their Bayes choices
  differ), where a pooled model must fail someone;
* ``ece`` — expected calibration error of ``σ(r_a − r_b)`` against ``p`` (10 equal-width bins).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 10


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def expected_calibration_error(prob: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / n) |mean predicted − mean true| over equal-width probability bins."""
    if len(prob) == 0:
        return float("nan")
    which = np.minimum((prob * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(prob[m].mean() - truth[m].mean())
    return float(total)


def pair_scores(rm, pairs, segment_ids: np.ndarray) -> np.ndarray:
    """``r_a − r_b`` per pair, both replies scored in one call (shared frozen states)."""
    n = len(pairs)
    r = rm.score(
        np.concatenate([segment_ids, segment_ids]),
        pairs.prompts + pairs.prompts,
        pairs.reply_a + pairs.reply_b,
    )
    return r[:n] - r[n:]


def controversial(population, pairs) -> np.ndarray:
    """Pairs whose segments' Bayes choices disagree (some segment prefers a, another b)."""
    from rlhf_persona.simulation import oracle

    q = oracle.segment_probabilities(population, pairs.features_a, pairs.features_b)
    pick_a = q >= 0.5
    return pick_a.any(0) & ~pick_a.all(0)


def evaluate_pairs(
    population, users, pairs, diff: np.ndarray, baseline: dict | None = None
) -> dict:
    """Metrics of score differences ``diff`` (``r_a − r_b``) on ``pairs`` (module docstring).

    ``baseline``: the global model's result on the same pairs, for ``gap_closed``.
    """
    from rlhf_persona.simulation import oracle

    p = pairs.p_true
    pred_a = diff > 0
    hit = np.where(pred_a, p, 1 - p)
    observed = (pred_a == (pairs.label > 0)).astype(float)
    prob = sigmoid(diff)
    ceil = oracle.bayes_accuracy(users, pairs.user_idx, pairs.features_a, pairs.features_b)
    hot = controversial(population, pairs)
    per: dict = {}
    for s, name in enumerate(population.segment_names):
        m = pairs.true_segment == s
        if not m.any():
            continue
        row = {
            "n": int(m.sum()),
            "acc": float(hit[m].mean()),
            "acc_observed": float(observed[m].mean()),
            "ceiling": ceil["per_segment"][name]["segment"],
            "pooled": ceil["per_segment"][name]["pooled"],
            "controversial_acc": float(hit[m & hot].mean()) if (m & hot).any() else None,
            "ece": expected_calibration_error(prob[m], p[m]),
        }
        if baseline is not None and name in baseline["per_segment"]:
            base = baseline["per_segment"][name]["acc"]
            room = row["ceiling"] - base
            row["gap_closed"] = float((row["acc"] - base) / room) if abs(room) > 1e-9 else None
        per[name] = row
    worst = min(per, key=lambda k: per[k]["acc"])
    return {
        "n": len(pairs),
        "acc": float(hit.mean()),
        "acc_observed": float(observed.mean()),
        "worst_segment": worst,
        "worst_acc": per[worst]["acc"],
        "worst_ratio_to_ceiling": per[worst]["acc"] / per[worst]["ceiling"],
        "min_ratio_to_ceiling": min(r["acc"] / r["ceiling"] for r in per.values()),
        "controversial_share": float(hot.mean()),
        "controversial_acc": float(hit[hot].mean()) if hot.any() else None,
        "ece": expected_calibration_error(prob, p),
        "ceiling": ceil["segment"],
        "per_segment": per,
    }


def evaluate_model(rm, split, baseline: dict | None = None) -> dict:
    """Held-out metrics on seen users / unseen prompts and on unseen users (module docstring)."""
    out = {}
    for name in ("seen", "unseen"):
        pairs = getattr(split, name)
        diff = pair_scores(rm, pairs, split.segments(pairs))
        base = baseline.get(name) if baseline else None
        out[name] = evaluate_pairs(split.population, split.users, pairs, diff, base)
    return out


def few_shot_curve(rm, split, counts: list[int]) -> dict:
    """New users' accuracy after 0, 5, 20, … of their own labels re-assign their segment.

    The reward model is fixed; only each new user's segment assignment changes, computed by the
    segmenter from their profile and their first ``n`` labels (``split.shots``).
    """
    pairs = split.unseen
    shots = split.shots
    new = split.new_users
    firsts: dict[int, list[dict]] = {}
    for u, event in zip(shots.user_idx.tolist(), shots.events, strict=True):
        firsts.setdefault(u, []).append(event)
    curve = {}
    for n in counts:
        events = [e for u in new.tolist() for e in firsts.get(u, [])[:n]]
        assigned = dict(
            zip(new.tolist(), split.assign_from_feedback(new, events).tolist(), strict=True)
        )
        segs = np.array([assigned[u] for u in pairs.user_idx.tolist()])
        diff = pair_scores(rm, pairs, segs)
        res = evaluate_pairs(split.population, split.users, pairs, diff)
        curve[n] = {
            "acc": res["acc"],
            "worst_acc": res["worst_acc"],
            "per_segment": {k: v["acc"] for k, v in res["per_segment"].items()},
        }
    return curve


def data_fingerprint(dataset) -> str:
    """A short hash of preference rows (reuse a saved model only for the data it was fit on)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for col in ("prompt", "chosen", "rejected", "segment_id"):
        for value in dataset[col]:
            h.update(str(value).encode())
            h.update(b"\x00")
    return h.hexdigest()


def fit_strategy(name: str, split, cfg, encoder: str, seed: int = 0, run=None, folder=None,
                 cache_dir=None, global_model=None):  # fmt: skip
    """A reward model of strategy ``name`` fit on the split's training export; reused from
    ``folder`` when one saved there was fit on exactly these rows, else fit (and saved).

    ``global_model`` (fitted on the same rows) is where ``lora`` starts its adapters from.
    """
    from pathlib import Path

    from rlhf_persona.reward.model import build_reward_model, load_reward_model

    dataset = split.preference_dataset()
    fingerprint = data_fingerprint(dataset)
    folder = Path(folder) if folder is not None else None
    if folder is not None and (folder / "reward_model.json").is_file():
        saved = load_reward_model(folder)
        if saved.stats_.get("data_fingerprint") == fingerprint and saved.strategy == name:
            return saved
    extra = {"base": global_model} if name == "lora" and global_model is not None else {}
    rm = build_reward_model(
        cfg.model_copy(update={"strategy": name}), encoder, split.cards, seed=seed,
        cache_dir=cache_dir, **extra,
    ).fit(dataset, run=run)  # fmt: skip
    rm.stats_["data_fingerprint"] = fingerprint
    if folder is not None:
        rm.save(folder)
    return rm


def compare_strategies(
    split,
    strategies: list[str],
    cfg,
    encoder: str = "embedded:minilm",
    seed: int = 0,
    run=None,
    models_dir=None,
    few_shot_strategy: str | None = None,
    cache_dir=None,
) -> dict:
    """Fit (or reuse from ``models_dir``) and evaluate each strategy on the simulated split.

    ``global`` is always evaluated first: the others' ``gap_closed`` is measured against it.
    Returns ``{"strategies": {name: {"seen", "unseen", "stats"}}, "few_shot": {...}}``.
    """
    from pathlib import Path

    order = ["global"] + [s for s in strategies if s != "global"]
    results: dict = {"strategies": {}}
    models: dict = {}
    for name in order:
        folder = Path(models_dir) / name if models_dir is not None else None
        rm = fit_strategy(
            name, split, cfg, encoder, seed, run, folder, cache_dir, models.get("global")
        )
        metrics = evaluate_model(rm, split, results["strategies"].get("global"))
        metrics["stats"] = {k: v for k, v in rm.stats_.items() if k != "phases"}
        results["strategies"][name] = metrics
        models[name] = rm
        if run is not None:
            run.log({"strategy": name, **{k: metrics[k] for k in ("seen", "unseen")}},
                    stage="reward_eval")  # fmt: skip
    pick = few_shot_strategy or best_conditioned(results)
    if pick is not None and pick in models:
        curve = few_shot_curve(models[pick], split, list(cfg.few_shot))
        results["few_shot"] = {"strategy": pick, "curve": curve}
        if run is not None:
            run.log({"few_shot": results["few_shot"]}, stage="reward_eval")
    return results


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def best_conditioned(results: dict, split_name: str = "seen") -> str | None:
    """The conditioned strategy with the highest worst-segment accuracy."""
    cands = {
        k: v[split_name]["worst_acc"] for k, v in results["strategies"].items() if k != "global"
    }
    return max(cands, key=cands.get) if cands else None


def results_tables(results: dict) -> list:
    """Rich tables: per-segment accuracy of every strategy beside the ceilings, per split, and
    the few-shot curve."""
    from rich.table import Table

    tables = []
    names = list(results["strategies"])
    for split_name, title in (("seen", "seen users, unseen prompts"), ("unseen", "unseen users")):
        first = results["strategies"][names[0]][split_name]
        table = Table(title=f"reward: pairwise accuracy per segment ({title})")
        for col in ("segment", "n", "ceiling", "pooled", *names):
            table.add_column(col, justify="left" if col == "segment" else "right")
        for seg, row in first["per_segment"].items():
            cells = []
            for name in names:
                r = results["strategies"][name][split_name]["per_segment"][seg]
                gap = r.get("gap_closed")
                extra = f" ({gap:+.0%} gap)" if gap is not None and name != "global" else ""
                cells.append(f"{r['acc']:.3f} ({r['acc'] / r['ceiling']:.0%}){extra}")
            table.add_row(
                seg, str(row["n"]), f"{row['ceiling']:.3f}", f"{row['pooled']:.3f}", *cells
            )
        summary = {
            "worst segment": lambda m: f"{m['worst_acc']:.3f} {m['worst_segment']}",
            "controversial": lambda m: _fmt(m["controversial_acc"]),
            "ECE σ(Δr) vs p": lambda m: f"{m['ece']:.3f}",
            "all pairs": lambda m: f"{m['acc']:.3f}",
        }  # fmt: skip
        for label, fmt in summary.items():
            table.add_row(
                label, "", "", "", *[fmt(results["strategies"][n][split_name]) for n in names]
            )
        tables.append(table)
    if "few_shot" in results:
        fs = results["few_shot"]
        table = Table(title=f"few-shot: new users' accuracy after n own labels ({fs['strategy']})")
        segs = list(next(iter(fs["curve"].values()))["per_segment"])
        for col in ("labels", "all", "worst", *segs):
            table.add_column(col, justify="right")
        for n, row in fs["curve"].items():
            cells = [f"{row['per_segment'].get(s, float('nan')):.3f}" for s in segs]
            table.add_row(str(n), f"{row['acc']:.3f}", f"{row['worst_acc']:.3f}", *cells)
        tables.append(table)
    return tables
