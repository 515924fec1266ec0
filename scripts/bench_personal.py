"""Benchmark: personalization levels vs built-in baselines (Polis, synthetic scale), simulation,
best-of-n serving.

Prints progress, then one final JSON line. Parts (``--parts``, default all):

* ``scale`` — a synthetic vote matrix with planted low-rank user structure (default 2,000 users ×
  900 items × 225k votes; ``--scale-votes`` adds more sizes, e.g. 1000000) imported into a SQLite
  store, then ``store_levels`` (what ``rlhf-persona reward personal`` runs) in a fresh child
  process: ``scale_peak_rss_mb`` (the child's peak RSS), ``scale_wall_s``, and per level and
  baseline ``acc_vote`` / ``acc_pair`` with 95% CIs resampling users;
* ``polis`` — the same report on the shared Polis conversations (item and user splits);
  ``polis.repeated`` (``--polis-split-seeds``, default 11–30; empty to skip): per split, each
  acceptance difference (global − ridge, segment − PCA clusters, user − kNN) averaged over
  that many other random splits, with a 95% interval of the mean (one Polis test split holds
  285–1,200 votes, so one split's difference moves by a point or two with the draw), and
  ``polis.acceptance``: per split and difference, seed 0's figure, the mean over the splits
  and whether that mean meets the bar (≥ 0; global ≥ ridge − 0.5 points);
* ``sim`` / ``best_of_n`` — the simulated levels with their Bayes ceilings, and best-of-n
  serving by the user-level reward (issue 9).

    .venv/bin/python scripts/bench_personal.py --parts scale,polis
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POLIS = Path(os.environ.get("RLHF_PERSONA_POLIS", "/work/shared/data/polis"))
MODELS = ("global", "segment", "user", "ridge", "user_intercept", "pca_clusters", "knn_users")


def compact(report: dict) -> dict:
    """The figures of a store_levels report: per model acc_vote / acc_pair with CIs, diffs."""
    lv = report["levels"]
    return {
        "models": {m: {k: {"acc": lv[k][m]["acc"], "ci": lv[k][m]["ci"]}
                       for k in ("acc_vote", "acc_pair")} for m in MODELS},
        "diffs": lv["diffs"], "k": lv["k"], "behaviour": report["behaviour"],
        "users": report["users"], "items": report["items"], "votes": report["votes"],
        "test_votes": report["test_votes"], "test_pairs": report["test_pairs"],
        "warnings": report["warnings"], "params": report["params"] | lv["params"],
    }  # fmt: skip


def build_synthetic_store(path: Path, users: int, items: int, votes: int, seed: int = 0) -> None:
    """A store with the synthetic vote matrix as thumbs (statements as replies to one prompt)."""
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.reward.votes import synthetic_votes

    data, _ = synthetic_votes(users, items, votes, seed=seed)
    store = FeedbackStore(path)
    prompt = "Synthetic conversation: agree or disagree?"
    reply_ids = [store.add_reply(prompt, f"Statement {i}: {text}", policy="synthetic")
                 for i, text in enumerate(_statements(items, seed))]  # fmt: skip
    batch = []
    for n, (u, i, y) in enumerate(zip(data.user.tolist(), data.item.tolist(), data.y.tolist(),
                                      strict=True)):  # fmt: skip
        batch.append({"event_id": f"syn{n}", "user_id": f"user{u}", "kind": "thumbs",
                      "reply_id": reply_ids[i], "value": int(y)})  # fmt: skip
        if len(batch) == 20_000:
            store.record_events(batch, create_users=True)
            batch = []
    if batch:
        store.record_events(batch, create_users=True)


def _statements(n: int, seed: int) -> list[str]:
    import numpy as np

    words = [
        "tax",
        "housing",
        "transit",
        "police",
        "schools",
        "wages",
        "parks",
        "climate",
        "health",
        "jobs",
        "rent",
        "zoning",
        "budget",
        "safety",
        "water",
        "energy",
    ]
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, 6)) for _ in range(n)]


def child(db: str, split: str) -> None:
    """Run store_levels on ``db`` and print its figures with this process's peak RSS."""
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.reward.personal_eval import store_levels

    t0 = time.perf_counter()
    report = store_levels(FeedbackStore(db), split=split, options=("behaviour",),
                          progress=lambda m: print(f"  {time.perf_counter() - t0:.0f} s {m}",
                                                   file=sys.stderr, flush=True))  # fmt: skip
    out = compact(report) | {
        "scale_wall_s": round(time.perf_counter() - t0, 1),
        "scale_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }  # fmt: skip
    print(json.dumps(out))


def scale(sizes: list[int], users: int, items: int, tmp: Path) -> dict:
    out = {}
    for n_votes in sizes:
        n_users = max(users, round(users * n_votes / 225_000))  # same votes per user
        db = tmp / f"synthetic_{n_votes}.db"
        t0 = time.perf_counter()
        build_synthetic_store(db, n_users, items, n_votes)
        print(f"store of {n_votes} votes built in {time.perf_counter() - t0:.0f} s; "
              f"load {os.getloadavg()}", flush=True)  # fmt: skip
        res = subprocess.run([sys.executable, __file__, "--child", str(db)], check=True,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        out[str(n_votes)] = json.loads(res.stdout.strip().splitlines()[-1]) | {
            "shape": [n_users, items, n_votes],
            "load_after": os.getloadavg(),
        }
        print(
            f"scale {n_votes}: {out[str(n_votes)]['scale_wall_s']} s, "
            f"{out[str(n_votes)]['scale_peak_rss_mb']} MB",
            flush=True,
        )
    return out


def polis(tmp: Path, splits=("item", "user"), split_seeds=()) -> dict:
    """Seed 0's full report per conversation and split; with ``split_seeds`` also the
    acceptance differences averaged over those other random splits (``repeated``)."""
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.feedback.importers import import_polis
    from rlhf_persona.reward.personal_eval import store_levels

    out, repeated = {}, {}
    for conv in ("brexit-consensus", "15-per-hour-seattle"):
        store = FeedbackStore(tmp / f"{conv}.db")
        import_polis(store, POLIS / conv)
        for split in splits:
            rep = store_levels(store, split=split, options=("behaviour",))
            out[f"{conv}/{split}"] = compact(rep)
            print(f"{conv} {split} done", flush=True)
            if split_seeds:
                reps = [store_levels(store, split=split, options=("behaviour",), seed=s,
                                     n_boot=10) for s in split_seeds]  # fmt: skip
                repeated[f"{conv}/{split}"] = across_splits(reps, split_seeds)
                print(f"{conv} {split}: {len(split_seeds)} more splits done", flush=True)
    if not repeated:
        return out
    return out | {"repeated": repeated, "acceptance": acceptance(out, repeated)}


COMPARISONS = (("global", "ridge"), ("segment", "pca_clusters"), ("user", "knn_users"))


def acceptance(seed0: dict, repeated: dict) -> dict:
    """Per split and acceptance difference (points, acc_vote / acc_pair): seed 0's figure, the
    mean over the repeated splits, and whether that mean meets the bar."""
    out = {}
    for key, rep in repeated.items():
        for a, b in COMPARISONS:
            bar = -0.5 if a == "global" else 0.0
            for metric in ("acc_vote", "acc_pair"):
                mean = rep[f"{a}-{b}/{metric}"]["mean"]
                first = 100 * seed0[key]["diffs"][f"{a}-{b}"][metric]["diff"]
                out[f"{key}/{a}-{b}/{metric}"] = {"seed0": round(first, 2), "mean": mean,
                                                  "meets": bool(mean >= bar)}  # fmt: skip
    return out


def across_splits(reports: list[dict], seeds) -> dict:
    """Per acceptance comparison and metric: the mean difference in points over the splits, a
    95% interval of that mean (t over splits) and how many splits the level won or tied."""
    from scipy import stats

    out: dict = {"split_seeds": list(seeds)}
    for a, b in COMPARISONS:
        for metric in ("acc_vote", "acc_pair"):
            d = np.array([100 * (r["levels"][metric][a]["acc"] - r["levels"][metric][b]["acc"])
                          for r in reports])  # fmt: skip
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            out[f"{a}-{b}/{metric}"] = {"mean": round(float(d.mean()), 2),
                                        "ci95": [round(float(d.mean() - half), 2),
                                                 round(float(d.mean() + half), 2)],
                                        "won_or_tied": int((d >= 0).sum())}  # fmt: skip
    return out


def sim_and_best_of_n(args, tmp: Path) -> dict:
    from rlhf_persona.config import RewardConfig
    from rlhf_persona.evaluation import best_of_n_thumbs, eval_items
    from rlhf_persona.policy.generate import PolicyGenerator
    from rlhf_persona.policy.registry import AdapterRegistry
    from rlhf_persona.reward.personal_eval import few_shot, fit_levels, sim_levels
    from rlhf_persona.reward.simulate import simulate_split
    from rlhf_persona.reward.user_level import ReplyFeaturizer

    cfg = RewardConfig(eval_labels_per_user=args.labels, eval_test_pairs_per_user=10)
    split = simulate_split("four_segments", args.users, cfg, seed=0)
    levels = fit_levels(split.preference_dataset(), ReplyFeaturizer("reply"), args.shrinkage)
    out: dict = {"sim_acc": sim_levels(split, levels, min_labels=30)}
    out["few_shot"] = {str(k): v for k, v in few_shot(split, levels, (0, 5, 20, 50)).items()}
    assign = {split.users.ids[i]: int(s) for i, s in enumerate(split.segment_of)}
    items = eval_items(split.users, assign, 4, 2, seed=0)
    gen = PolicyGenerator(AdapterRegistry(tmp / "reg", args.policy), device="cpu")
    bon = best_of_n_thumbs(split.users, items, gen, levels["user"], ns=(1, 4, 8),
                           max_new_tokens=48)  # fmt: skip
    out["best_of_n"] = {str(n): v for n, v in bon.items()}
    out["policy"] = args.policy
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parts", default="scale,polis,sim")
    ap.add_argument("--scale-votes", default="225000", help="comma-separated vote counts")
    ap.add_argument("--scale-users", type=int, default=2000)
    ap.add_argument("--scale-items", type=int, default=900)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--labels", type=int, default=40)
    ap.add_argument("--shrinkage", type=float, default=5.0)
    ap.add_argument("--policy", default="embedded:tiny-test")
    ap.add_argument(
        "--polis-split-seeds",
        default=",".join(str(s) for s in range(11, 31)),
        help="comma-separated: repeat each Polis split with these seeds and report "
        "the mean acceptance differences over them (seed 0 is the full report; '' skips)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--split", default="item", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.split)
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    out: dict = {"load_start": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        if "scale" in parts:
            sizes = [int(v) for v in args.scale_votes.split(",")]
            out["scale"] = scale(sizes, args.scale_users, args.scale_items, Path(tmp))
            first = out["scale"][str(sizes[0])]
            out["scale_peak_rss_mb"], out["scale_wall_s"] = (first["scale_peak_rss_mb"],
                                                             first["scale_wall_s"])  # fmt: skip
        if "polis" in parts:
            seeds = [int(v) for v in args.polis_split_seeds.split(",") if v]
            out["polis"] = polis(Path(tmp), split_seeds=seeds)
        if "sim" in parts:
            out |= sim_and_best_of_n(args, Path(tmp))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["load_end"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
