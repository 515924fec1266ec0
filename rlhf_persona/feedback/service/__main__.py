"""``python -m rlhf_persona.feedback.service --db URL --port N``: the ``serve`` command without
loading the rest of the CLI (faster start for tests and benchmarks)."""

import typer

from rlhf_persona.feedback.commands import serve

if __name__ == "__main__":
    typer.run(serve)
