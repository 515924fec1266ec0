"""``rlhf-persona segment fit | assign | show``: segment the store's users, place users, show cards.

Heavy libraries are imported inside the commands so ``rlhf-persona --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Group users into segments from profiles and feedback; show segment cards.",
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
SegmenterDir = typer.Argument(..., help="Folder of a saved segmenter (written by `segment fit`).")


def _open_store(cfg, db: str | None):
    from rlhf_persona.feedback import FeedbackStore

    if db is not None:
        return FeedbackStore(db, must_exist=True)
    return FeedbackStore.from_config(cfg.store, cfg.run_dir, must_exist=True)


@app.command("fit")
def fit(
    config: Path | None = ConfigPath,
    overrides: list[str] | None = SetOption,
    db: str | None = DbOption,
    run_id: str | None = typer.Option(
        None, help="Segmentation run id written with the assignments (default: run name)."
    ),
    out: Path | None = typer.Option(
        None, help="Where to save the segmenter (default: RUN_DIR/segmenter/RUN_ID)."
    ),
    previous: Path | None = typer.Option(
        None, help="A previous round's saved segmenter: keep its segment ids."
    ),
) -> None:
    """Fit segments on the store's users and write every user's segment to the store."""
    from rlhf_persona.config import load_config
    from rlhf_persona.segmentation.data import fit_from_store

    cfg = load_config(config, overrides)
    run_id = run_id or cfg.run.name
    out = out or cfg.run_dir / "segmenter" / run_id
    seg = fit_from_store(
        _open_store(cfg, db), cfg.segmentation, run_id, previous, out, seed=cfg.run.seed
    )
    typer.echo(f"{seg.n_users_} users → {len(seg.cards_)} segments (run {run_id}); saved to {out}")
    _print_cards(seg.cards_)


@app.command("assign")
def assign(
    segmenter_dir: Path = SegmenterDir,
    users: list[str] | None = typer.Option(
        None, "--user", help="User id to assign (repeatable; default: every user in the store)."
    ),
    config: Path | None = typer.Option(None, help="Experiment config (for the store URL)."),
    db: str | None = DbOption,
    write: str | None = typer.Option(
        None, help="Also write the assignments to the store under this segmentation run id."
    ),
) -> None:
    """Place users (new ones too: cold start from their profile) into the saved segments."""
    from rich.console import Console
    from rich.table import Table

    from rlhf_persona.config import load_config
    from rlhf_persona.segmentation.data import user_table_from_store
    from rlhf_persona.segmentation.segmenter import Segmenter

    seg = Segmenter.load(segmenter_dir)
    cfg = load_config(config)
    db = _open_store(cfg, db)
    table = user_table_from_store(
        db,
        seg.featurizer_.behaviour_mode_,
        stats=seg.behaviour_stats_,
        alpha=cfg.segmentation.ridge_alpha,
        embed=cfg.segmentation.embed_relevance,
        user_ids=users or None,
    )
    segments, confidence = seg.assign(table)
    out = Table("user_id", "segment", "confidence", "feedback events")
    for uid, s, c, n in zip(table.user_ids, segments, confidence, table.n_feedback, strict=True):
        out.add_row(uid, str(s), f"{c:.2f}", str(n))
    Console().print(out)
    if write:
        rows = zip(table.user_ids, segments.tolist(), confidence.tolist(), strict=True)
        db.write_segments(write, list(rows))
        typer.echo(f"wrote {len(segments)} assignments under run {write}")


@app.command("show")
def show(segmenter_dir: Path = SegmenterDir) -> None:
    """Print the segment cards of a saved segmenter as a table."""
    from rlhf_persona.segmentation.segmenter import Segmenter

    _print_cards(Segmenter.load(segmenter_dir).cards_)


def _print_cards(cards) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("segment", "users", "share", "over-represented", "rewards", "persona")
    for card in cards:
        attrs = "\n".join(
            f"{a['attribute']}={a['value']} ×{a['lift']:.1f}" for a in card.attributes
        )
        traits = "\n".join(
            f"{'+' if t.get('vs_overall', t['weight']) > 0 else '−'} {t.get('text', t['trait'])}"
            for t in card.rewards + card.dislikes
        )
        table.add_row(
            str(card.segment_id),
            str(card.size),
            f"{card.share:.0%}",
            attrs,
            traits,
            card.persona_text,
        )
    Console().print(table)
