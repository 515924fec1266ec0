"""``python -m rlhf_persona.api --db URL --port N``: the ``serve`` command without
loading the rest of the CLI (faster start for tests and benchmarks)."""

import sys

import typer

from rlhf_persona.api.commands import serve
from rlhf_persona.errors import UserError

if __name__ == "__main__":
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    app.command()(serve)
    try:
        app()
    except UserError as exc:  # as the main CLI: one error line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
