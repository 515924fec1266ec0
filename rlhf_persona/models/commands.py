"""``rlhf-persona models ...``: build, inspect and sample the embedded models."""

from __future__ import annotations

import typer

app = typer.Typer(help="Build, inspect and sample models (embedded or hub).", no_args_is_help=True)


@app.command("show")
def show(spec: str = typer.Argument(..., help="Model spec: embedded:NAME, hub id or path.")) -> None:
    """Print parameters, size and path of a model."""
    from rlhf_persona.models import model_info

    for key, value in model_info(spec).items():
        typer.echo(f"{key}: {value}")
