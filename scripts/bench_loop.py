"""Rerun the quickstart loop from scratch on one or more seeds and print its acceptance figures.

    python scripts/bench_loop.py                              # configs/quickstart.yaml, seed 0
    python scripts/bench_loop.py --seeds 0,1,2,3,4            # the claim on five seeds
    python scripts/bench_loop.py --config configs/drift.yaml  # drifting tastes, 4 rounds

One JSON line per seed, then (with several seeds) a summary line. Per seed: ``seed``,
``wall_s`` (the loop, model build excluded), ``stage_s`` (stage → seconds, summed over rounds),
``stage_s_per_round``, ``thumbs_up`` (segment → base / global / personalized, last round),
``gain_ci95`` (segment → personalized − base with its 95% interval and rows), ``minority_gain``,
``kl`` (last round), ``checks`` (``rlhf_persona.evaluation.acceptance_checks``), ``passed``,
and, for a population with drift, ``drift_recovery`` (see
``rlhf_persona.evaluation.drift_recovery``). Summary: ``pass_rate``, ``failed_seeds``,
``wall_s`` per seed and its maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")


def run_seed(config: str, overrides: list[str], seed: int) -> dict:
    from rlhf_persona.config import load_config
    from rlhf_persona.evaluation import acceptance_checks, drift_recovery, run_round_records
    from rlhf_persona.loop import run_loop
    from rlhf_persona.models import resolve_model_path
    from rlhf_persona.simulation import load_population

    cfg = load_config(config, [f"run.name=bench_loop_seed{seed}", f"run.seed={seed}", *overrides])
    resolve_model_path(cfg.models.policy, cfg.models.cache_dir)  # build outside the timing
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    start = time.perf_counter()
    run_loop(cfg)
    wall = time.perf_counter() - start

    rounds, stage_total = run_round_records(cfg.run_dir, cfg.loop.rounds)
    last = rounds[-1]["eval"]
    population = load_population(cfg.population.name)
    accepted = acceptance_checks(last, population)
    out = {
        "seed": seed,
        "wall_s": round(wall, 1),
        "stage_s": stage_total,
        "stage_s_per_round": [rec["stage_s"] for rec in rounds],
        **accepted,
        "gain_ci95": {
            seg: {
                "mean": round(g["vs_base"]["mean"], 4),
                "n": g["vs_base"]["n"],
                "ci95": [round(x, 4) for x in g["vs_base"]["ci95"]],
            }
            for seg, g in last.get("gain", {}).items()
        },
        "kl": last["kl"],
        "reward": last.get("reward"),
        "passed": all(accepted["checks"].values()),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if population.drift:
        out["drift_recovery"] = drift_recovery(
            [rec["eval"] for rec in rounds],
            population.drift[0].segment,
            population.drift[0].after_round,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.seeds is None:
        from rlhf_persona.config import load_config

        seeds = [load_config(args.config, args.overrides).run.seed]
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for seed in seeds:
        results.append(run_seed(args.config, args.overrides, seed))
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        walls = [r["wall_s"] for r in results]
        print(json.dumps({
            "seeds": seeds,
            "pass_rate": sum(r["passed"] for r in results) / len(results),
            "failed_seeds": {r["seed"]: [k for k, ok in r["checks"].items() if not ok]
                             for r in results if not r["passed"]},
            "wall_s": walls,
            "max_wall_s": max(walls),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
