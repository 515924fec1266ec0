"""Benchmark: global vs segment vs user-level reward (simulation + Polis), best-of-n serving.

Prints progress, then one final JSON line with ``sim_acc``, ``few_shot``, ``polis`` and
``best_of_n`` (see issue 9). Light models (reward/light.py) for every level; ≈ minutes on 2 CPUs.

    .venv/bin/python scripts/bench_personal.py [--users 200] [--policy embedded:tiny-test]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
POLIS = Path(os.environ.get("RLHF_PERSONA_POLIS", "/work/shared/data/polis"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--labels", type=int, default=40)
    ap.add_argument("--shrinkage", type=float, default=5.0)
    ap.add_argument("--policy", default="embedded:tiny-test")
    args = ap.parse_args()
    from rlhf_persona.config import RewardConfig
    from rlhf_persona.evaluation import best_of_n_thumbs, eval_items
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.feedback.importers import import_polis
    from rlhf_persona.policy.generate import PolicyGenerator
    from rlhf_persona.policy.registry import AdapterRegistry
    from rlhf_persona.reward.personal_eval import few_shot, fit_levels, sim_levels, store_levels
    from rlhf_persona.reward.simulate import simulate_split
    from rlhf_persona.reward.user_level import ReplyFeaturizer

    t0 = time.perf_counter()
    cfg = RewardConfig(eval_labels_per_user=args.labels, eval_test_pairs_per_user=10)
    split = simulate_split("four_segments", args.users, cfg, seed=0)
    levels = fit_levels(split.preference_dataset(), ReplyFeaturizer("reply"), args.shrinkage)
    out: dict = {"sim_acc": sim_levels(split, levels, min_labels=30)}
    out["few_shot"] = {str(k): v for k, v in few_shot(split, levels, (0, 5, 20, 50)).items()}
    print(f"simulation done {time.perf_counter() - t0:.0f} s", json.dumps(out), flush=True)

    out["polis"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for conv in ("brexit-consensus", "15-per-hour-seattle"):
            store = FeedbackStore(Path(tmp) / f"{conv}.db")
            import_polis(store, POLIS / conv)
            rep = store_levels(store, split="item", options=("profile", "behaviour"),
                               shrinkage=args.shrinkage)  # fmt: skip
            lv = rep["levels"]
            keys = ("global", "segment", "user", "segment-global", "user-segment", "user-global")
            out["polis"][conv] = {k: lv[k] for k in keys} | {
                "worst_segment": lv["worst_segment"], "k": lv["k"],
                "test_pairs": rep["test_pairs"], "profile": rep["segmentations"]["profile"],
            }  # fmt: skip
            print(f"{conv} done {time.perf_counter() - t0:.0f} s", flush=True)

        assign = {split.users.ids[i]: int(s) for i, s in enumerate(split.segment_of)}
        items = eval_items(split.users, assign, 4, 2, seed=0)
        gen = PolicyGenerator(AdapterRegistry(Path(tmp) / "reg", args.policy), device="cpu")
        bon = best_of_n_thumbs(split.users, items, gen, levels["user"], ns=(1, 4, 8),
                               max_new_tokens=48)  # fmt: skip
    out["best_of_n"] = {str(n): v for n, v in bon.items()}
    out["policy"] = args.policy
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
