"""``rlhf-persona reward personal``: global vs segment vs user level on any store (or simulated).

Registered on the ``reward`` sub-app by ``reward/commands.py``; heavy imports stay inside.
"""

from __future__ import annotations

from pathlib import Path

import typer


def personal(
    config: Path | None = typer.Argument(None, help="Experiment config YAML (configs/*.yaml)."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override: KEY.SUB=VALUE."),
    db: str | None = typer.Option(
        None, "--db", help="Feedback store URL / SQLite path (default: the config's store)."
    ),
    simulate: bool = typer.Option(
        False, help="Evaluate on the config's simulated population instead (adds the ceilings)."
    ),
    split: str = typer.Option("item", help="item | user | new_item (held-out split)."),
    segmentation: str = typer.Option(
        "profile,behaviour,both", help="Segmentation options to compare side by side."
    ),
    out: Path | None = typer.Option(
        None, help="JSON report (default RUN_DIR/reward/personal.json)."
    ),
    max_votes: int | None = typer.Option(
        None, help="Sample whole users down to this many votes (large stores)."
    ),
    max_gb: float = typer.Option(
        4.0, help="Stop with advice when the estimated working memory exceeds this (GiB)."
    ),
    rank: int = typer.Option(8, help="User level: dimensions of the shared item basis."),
) -> None:
    """Held-out per-vote and within-user pairwise accuracy of the global, segment and user
    levels beside built-in baselines (ridge, per-user intercept, PCA vote clusters, kNN users),
    with bootstrap 95% CIs resampling users; ceilings when simulated."""
    import json

    from rich.console import Console

    from rlhf_persona.config import load_config
    from rlhf_persona.errors import UserError
    from rlhf_persona.reward import personal_eval as pe

    cfg = load_config(config, overrides)
    options = [s.strip() for s in segmentation.split(",") if s.strip()]
    bad = sorted(set(options) - {"profile", "behaviour", "both"})
    if bad:
        raise UserError(f"--segmentation: unknown option(s) {bad} (profile, behaviour, both)")
    if split not in pe.SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(pe.SPLITS)}")
    r = cfg.reward
    if simulate:
        from rlhf_persona.reward.simulate import simulate_split

        data = simulate_split(cfg.population.name, cfg.population.users, r, cfg.segmentation,
                              cfg.run.seed)  # fmt: skip
        report = pe.simulated_report(data, r.user_shrinkage, tuple(r.few_shot))
    else:
        from rlhf_persona.feedback import FeedbackStore

        store = FeedbackStore.from_config(cfg.store, cfg.run_dir, url=db, must_exist=True)
        # The behaviour mode follows the data unless the config or --set names one.
        seg_cfg = cfg.segmentation
        behaviour = seg_cfg.behaviour if "behaviour" in seg_cfg.model_fields_set else "auto"
        with Console().status("evaluating") as status:
            report = pe.store_levels(
                store, split=split, options=tuple(options), behaviour=behaviour,
                shrinkage=r.user_shrinkage, k=seg_cfg.k, seed=cfg.run.seed,
                encoder=cfg.models.encoder, dims=r.user_dims, rank=rank, max_votes=max_votes,
                max_gb=max_gb, progress=lambda msg: status.update(msg),
            )  # fmt: skip
    console = Console()
    if "acc_vote" in report.get("levels", {}):
        from rlhf_persona.reward.personal_report import print_report

        print_report(console, report)
    else:
        console.print_json(json.dumps(_summary(report), default=str))
    path = out or cfg.run_dir / "reward" / "personal.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    console.print(f"written {path}", highlight=False)


def _summary(report: dict) -> dict:
    if "sim_acc" in report:
        return report
    short = {k: report[k] for k in ("split", "users", "test_pairs", "ceilings")}
    for option, res in report["segmentations"].items():
        if isinstance(res, str):
            short[option] = res
            continue
        keys = ("global", "segment", "user", "segment-global", "user-segment", "user-global")
        short[option] = {k: res[k] for k in keys} | {"worst_segment": res["worst_segment"]}
    return short
