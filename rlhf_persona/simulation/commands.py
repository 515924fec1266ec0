"""``rlhf-persona simulate``: a population's summary and its oracle ceilings."""

from __future__ import annotations

import typer


def simulate(
    population: str = typer.Option(
        "four_segments", "--population", "-p", help="Shipped population name or YAML path."
    ),
    users: int | None = typer.Option(
        None, "--users", "-n", min=1, help="Users to sample (default: the population's)."
    ),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed for users and reference pairs."),
    pairs: int = typer.Option(4000, "--pairs", min=10, help="Reference reply pairs."),
) -> None:
    """Sample a simulated population; print its segments and the Bayes ceilings."""
    from rich.console import Console

    from rlhf_persona.simulation import load_population, oracle

    pop = load_population(population)
    sampled = pop.sample_users(users, seed)
    rows, ceil = oracle.population_summary(pop, sampled, n_pairs=pairs, seed=seed)
    console = Console()
    console.print(f"[bold]{pop.name}[/bold]: {pop.description}", highlight=False)
    console.print(_ceiling_table(pop, sampled, rows, ceil))
    console.print(_preference_table(pop))
    console.print(_notes(pop, sampled), highlight=False)


def _ceiling_table(pop, sampled, rows, ceil):
    from rich.table import Table

    table = Table(title=f"{len(sampled)} users: pairwise Bayes ceilings on reference pairs")
    table.add_column("segment")
    for col in ("share", "sampled", "personal", "segment", "pooled"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["name"], f"{r['share']:.2f}", f"{r['observed_share']:.2f}",
            f"{r['personal']:.3f}", f"{r['segment']:.3f}", f"{r['pooled']:.3f}",
        )  # fmt: skip
    table.add_row(
        "all", "1.00", "1.00", f"{ceil['personal']:.3f}", f"{ceil['segment']:.3f}",
        f"{ceil['pooled']:.3f}", style="bold",
    )  # fmt: skip
    return table


def _preference_table(pop):
    """Features as rows, segments as columns: fits a terminal for a handful of segments."""
    from rich import box
    from rich.table import Table

    from rlhf_persona.simulation.features import FEATURE_NAMES
    from rlhf_persona.simulation.population import segment_mean, segment_sd

    table = Table(title="Mean preference weights w; utility = w · (features − 0.5)", box=box.SIMPLE)
    table.add_column("feature")
    for seg in pop.segments:
        table.add_column(seg.name, justify="right")
    means = [segment_mean(seg) for seg in pop.segments]
    for j, feature in enumerate(FEATURE_NAMES):
        table.add_row(feature, *(f"{m[j]:+.1f}" for m in means))
    sds = [segment_sd(seg) for seg in pop.segments]
    table.add_row("(individual sd)", *(_sd_text(sd) for sd in sds), style="dim")
    return table


def _sd_text(sd) -> str:
    return f"{sd[0]:g}" if (sd == sd[0]).all() else f"{sd.min():g}-{sd.max():g}"


def _notes(pop, sampled) -> str:
    from rlhf_persona.simulation import oracle

    mix, beta = pop.channels, pop.rationality
    lines = [
        f"channels (default): thumbs {mix.thumbs:.2f}, rating {mix.rating:.2f}, pairwise "
        f"{mix.pairwise:.2f}, abstain {mix.abstain:.2f}; rationality: thumbs {beta.thumbs:g}, "
        f"rating {beta.rating:g}, pairwise {beta.pairwise:g}",
        f"segment guessed from the profile alone: {oracle.profile_segment_accuracy(sampled):.1%}"
        f" correct (largest share {max(pop.shares):.0%})",
    ]
    for d in pop.drift:
        shift = ", ".join(f"{k} {v:+g}" for k, v in d.shift.items())
        lines.append(f"drift: {d.segment} after round {d.after_round}: {shift}")
    return "\n".join(lines)
