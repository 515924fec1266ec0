"""The ``rlhf-persona`` command line: thin; parses, loads config, calls the library.

Each stage adds its commands as a typer sub-app in its own ``commands.py`` (imported lazily inside
the command functions, so ``--help`` stays fast) and is mounted below.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from rlhf_persona.errors import UserError

console = Console()
app = typer.Typer(
    help="rlhf_persona: turn users' thumbs, ratings and A/B choices into chatbots personalized "
    "per kind of user.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

config_app = typer.Typer(help="Inspect experiment configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigPath = typer.Argument(None, help="Experiment config YAML (configs/*.yaml).")
SetOption = typer.Option(None, "--set", help="Override a config value: KEY.SUB=VALUE (repeatable).")


def _print_version(value: bool) -> None:
    if value:
        from rlhf_persona import __version__

        console.print(f"rlhf-persona {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Options of the command itself (before any sub-command)."""


@config_app.command("show")
def config_show(
    path: Path | None = ConfigPath,
    overrides: list[str] | None = SetOption,
    schema: bool = typer.Option(False, help="Print every field with its default and meaning."),
) -> None:
    """Validate a config and print it resolved (or the documented schema)."""
    from rlhf_persona.config import describe_fields, dump_config, load_config

    if schema:
        table = Table("key", "type", "default", "meaning")
        for key, type_name, default, desc in describe_fields():
            table.add_row(key, type_name, repr(default), desc)
        console.print(table)
        return
    console.print(dump_config(load_config(path, overrides)), end="")


@app.command("loop")
def loop_cmd(
    path: Path = typer.Argument(..., help="Experiment config YAML, e.g. configs/quickstart.yaml."),
    overrides: list[str] | None = SetOption,
) -> None:
    """Run the closed loop (collect, segment, reward, policy, evaluate); resumes a stopped run."""
    from rlhf_persona.config import load_config
    from rlhf_persona.loop import run_loop

    cfg = load_config(path, overrides)
    _, report = run_loop(cfg)
    if report is not None:  # None on the non-main processes of a multi-process launch
        console.print(f"report: {report}")


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A loop run folder.")) -> None:
    """Write the HTML report with plots of a loop run."""
    from rlhf_persona.report import write_report

    console.print(f"report: {write_report(run_dir)}")


def _mount_subapps() -> None:
    from rlhf_persona.models.commands import app as models_app

    app.add_typer(models_app, name="models")

    from rlhf_persona.api.commands import register as register_api

    register_api(app)  # serve

    from rlhf_persona.feedback.commands import register as register_feedback

    register_feedback(app)  # export, import, keys, db

    from rlhf_persona.serving.commands import register as register_chat

    register_chat(app)  # simulate-traffic, chat-link

    from rlhf_persona.simulation.commands import simulate

    app.command("simulate")(simulate)

    from rlhf_persona.segmentation.commands import app as segment_app

    app.add_typer(segment_app, name="segment")  # fit, assign, show

    from rlhf_persona.reward.commands import app as reward_app

    app.add_typer(reward_app, name="reward")  # train, eval

    from rlhf_persona.policy.commands import app as policy_app

    app.add_typer(policy_app, name="policy")  # train


_mount_subapps()


def main() -> None:
    """Entry point: user errors print one clear message and exit 2, never a traceback."""
    from rlhf_persona.quiet import quiet_libraries

    quiet_libraries()
    try:
        app()
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
