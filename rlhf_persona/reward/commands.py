"""``rlhf-persona reward train | eval``: fit segment-conditioned reward models and evaluate them.

Heavy libraries are imported inside the commands so ``rlhf-persona --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Train segment-conditioned reward models (TRL RewardTrainer) and evaluate them.",
    no_args_is_help=True,
)

ConfigPath = typer.Argument(None, help="Experiment config YAML (configs/*.yaml).")
SetOption = typer.Option(None, "--set", help="Override a config value: KEY.SUB=VALUE.")
DbOption = typer.Option(
    None,
    "--db",
    help="Feedback store: URL or SQLite path (default: the config's store.url, else "
    "$RLHF_PERSONA_DATABASE_URL, else RUN_DIR/feedback.db).",
)


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


def _store_data(cfg, db: str | None, segmenter: Path | None):
    """(preference export, segment cards) from the feedback store and a saved segmenter."""
    from rlhf_persona.feedback import FeedbackStore
    from rlhf_persona.feedback.export import export_preference
    from rlhf_persona.segmentation import Segmenter

    store = FeedbackStore.from_config(cfg.store, cfg.run_dir, url=db, must_exist=True)
    export = export_preference(store, across_prompts=cfg.reward.pairs_across_prompts)
    folder = segmenter or cfg.run_dir / "segmenter" / cfg.run.name
    cards = Segmenter.load(folder).cards_ if (folder / "segmenter.json").is_file() else None
    return export, cards


def _simulated_data(cfg):
    from rlhf_persona.reward.simulate import simulate_split

    split = simulate_split(
        cfg.population.name, cfg.population.users, cfg.reward, cfg.segmentation, cfg.run.seed
    )
    return split


@app.command("train")
def train(
    config: Path | None = ConfigPath,
    overrides: list[str] | None = SetOption,
    source: str = typer.Option(
        "store",
        help="store: the feedback store's preference export; simulate: labels drawn from the "
        "config's population (the same split `reward eval` uses).",
    ),
    db: str | None = DbOption,
    segmenter: Path | None = typer.Option(
        None, help="Saved segmenter whose cards give persona texts (default RUN_DIR/segmenter/RUN)."
    ),
    out: Path | None = typer.Option(None, help="Where to save (default RUN_DIR/reward/STRATEGY)."),
) -> None:
    """Fit the configured reward strategy and save it."""
    from rich.console import Console

    from rlhf_persona.config import load_config
    from rlhf_persona.errors import UserError
    from rlhf_persona.reward import build_reward_model
    from rlhf_persona.reward.evaluate import data_fingerprint
    from rlhf_persona.tracking import start_run

    cfg = load_config(config, overrides)
    if source not in ("store", "simulate"):
        raise UserError(f"--source {source!r}: expected store or simulate")
    _quiet_libraries()
    if source == "store":
        export, cards = _store_data(cfg, db, segmenter)
    else:
        split = _simulated_data(cfg)
        export, cards = (split.preference_dataset(), {"source": "simulate"}), split.cards
    out = out or cfg.run_dir / "reward" / cfg.reward.strategy
    with start_run(cfg, resume=True) as run:
        rm = build_reward_model(
            cfg.reward, cfg.models.encoder, cards, seed=cfg.run.seed, cache_dir=cfg.models.cache_dir
        ).fit(export, run=run)
        rm.stats_["data_fingerprint"] = data_fingerprint(export[0])
        rm.save(out)
    s = rm.stats_
    Console().print(
        f"reward {s['strategy']}: {s['pairs']} pairs {s['pairs_per_segment']}, {s['steps']} "
        f"steps in {s['train_s']:.0f} s ({s['step_s']:.2f} s/step), {s['unusable_thumbs']} "
        f"unusable thumbs → {out}",
        highlight=False,
        soft_wrap=True,
    )
    for decision in s["decisions"]:
        Console().print(f"  note: {decision}", highlight=False)


@app.command("eval")
def evaluate(
    config: Path | None = ConfigPath,
    overrides: list[str] | None = SetOption,
    strategies: str = typer.Option(
        "global,prefix,heads,lora",
        help="Comma-separated strategies to compare; global is always included.",
    ),
    models_dir: Path | None = typer.Option(
        None,
        help="Reuse models saved here (RUN_DIR/reward by default) when they were fit on this "
        "split; others are trained and saved.",
    ),
) -> None:
    """Held-out accuracy per segment against the simulator's Bayes ceilings; few-shot curve."""
    import json

    from rich.console import Console

    from rlhf_persona.config import load_config
    from rlhf_persona.errors import UserError
    from rlhf_persona.reward.evaluate import compare_strategies, results_tables
    from rlhf_persona.reward.model import strategy_names
    from rlhf_persona.tracking import start_run

    cfg = load_config(config, overrides)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    known = strategy_names()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise UserError(f"--strategies: unknown {unknown} (known: {', '.join(known)})")
    _quiet_libraries()
    split = _simulated_data(cfg)
    with start_run(cfg, resume=True) as run:
        results = compare_strategies(
            split, names, cfg.reward, cfg.models.encoder, cfg.run.seed, run,
            models_dir or cfg.run_dir / "reward", cache_dir=cfg.models.cache_dir,
        )  # fmt: skip
        run.summary({"reward_eval": results})
    console = Console()
    console.width = max(console.width, 130)  # the tables are wide; a pipe defaults to 80
    for table in results_tables(results):
        console.print(table)
    path = cfg.run_dir / "reward" / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    console.print(f"written {path}", highlight=False)


# Global vs segment vs user level on any store (issue 9): rlhf_persona/reward/personal_commands.py
from rlhf_persona.reward.personal_commands import personal  # noqa: E402

app.command("personal")(personal)
