"""Rerun the quickstart loop from scratch and print its acceptance figures as a final JSON line.

    python scripts/bench_loop.py                      # configs/quickstart.yaml
    python scripts/bench_loop.py --config configs/drift.yaml     # drifting tastes, 4 rounds

Keys: ``wall_s`` (the loop, model build excluded), ``stage_s`` (stage → seconds, summed over
rounds, and per round), ``thumbs_up`` (segment → base / global / personalized, last round),
``minority_gain`` (personalized − base on the smallest segment), ``kl`` (last round), and, for a
population with drift, ``drift_recovery`` (rounds until the drifting segment's satisfaction is
back, see ``rlhf_persona.evaluation.drift_recovery``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from rlhf_persona.config import load_config
    from rlhf_persona.evaluation import drift_recovery
    from rlhf_persona.loop import run_loop
    from rlhf_persona.models import resolve_model_path
    from rlhf_persona.simulation import load_population

    overrides = ["run.name=bench_loop", *args.overrides]
    cfg = load_config(args.config, overrides)
    resolve_model_path(cfg.models.policy, cfg.models.cache_dir)  # build outside the timing
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    start = time.perf_counter()
    run_loop(cfg)
    wall = time.perf_counter() - start

    rounds = [
        json.loads((cfg.run_dir / f"round_{r}" / "round.json").read_text())
        for r in range(cfg.loop.rounds)
    ]
    stage_total: dict[str, float] = {}
    for rec in rounds:
        for stage, secs in rec["stage_s"].items():
            stage_total[stage] = round(stage_total.get(stage, 0.0) + secs, 1)
    last = rounds[-1]["eval"]
    thumbs = {
        seg: {p: round(v[p]["thumbs_up"], 4) for p in ("base", "global", "personalized")}
        for seg, v in last["segments"].items()
    }
    population = load_population(cfg.population.name)
    minority = population.segments[
        min(range(len(population.shares)), key=population.shares.__getitem__)
    ]
    gain = thumbs[minority.name]["personalized"] - thumbs[minority.name]["base"]
    out = {
        "wall_s": round(wall, 1),
        "stage_s": stage_total,
        "stage_s_per_round": [rec["stage_s"] for rec in rounds],
        "thumbs_up": thumbs,
        "minority_segment": minority.name,
        "minority_gain": round(gain, 4),
        "kl": last["kl"],
        "reward": last.get("reward"),
        "checks": {
            "personalized_ge_base_plus_0.15": all(
                v["personalized"] >= v["base"] + 0.15 for v in thumbs.values()
            ),
            "personalized_ge_global": all(
                v["personalized"] >= v["global"] for v in thumbs.values()
            ),
            "minority_gain_ge_0.2": gain >= 0.2,
        },
        "load_average_1m": os.getloadavg()[0],
    }
    if population.drift:
        out["drift_recovery"] = drift_recovery(
            [rec["eval"] for rec in rounds],
            population.drift[0].segment,
            population.drift[0].after_round,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
