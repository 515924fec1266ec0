"""CLI of the feedback store: ``export``, ``import``, ``keys ...``, ``db ...`` (``serve`` is in
``rlhf_persona.api.commands``).

The database is ``--db`` (URL or SQLite path), else ``store.url`` of ``--config``, else
``$RLHF_PERSONA_DATABASE_URL``, else ``./feedback.db``. Heavy imports happen inside the
commands so that ``rlhf-persona --help`` stays fast.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from rlhf_persona.errors import UserError

DbOption = typer.Option(
    None, "--db", help="Database URL (postgresql://..., sqlite:///f.db) or SQLite file path."
)
ConfigOption = typer.Option(None, "--config", help="Experiment config; its store.url is used.")

keys_app = typer.Typer(help="Manage API keys of the feedback service.", no_args_is_help=True)
db_app = typer.Typer(help="Migrate the feedback database (Alembic).", no_args_is_help=True)


def store_url(db: str | None, config: Path | None) -> str:
    """The database URL of ``--db`` / ``--config`` (see the module docstring)."""
    from rlhf_persona.feedback.db import resolve_url

    if db is None and config is not None:
        from rlhf_persona.config import load_config

        db = load_config(config).store.url
    return resolve_url(db)


def open_store(db: str | None, config: Path | None = None, *, must_exist: bool = False):
    """The store at ``store_url(db, config)``, opened (and migrated)."""
    from rlhf_persona.feedback.store import FeedbackStore

    return FeedbackStore(store_url(db, config), must_exist=must_exist)


def export_cmd(
    fmt: str = typer.Option(..., "--format", help="preference | kto | ratings"),
    out: Path = typer.Option(
        ..., "--out", help="Folder to write to: train.jsonl (or .parquet) + README.md card."
    ),
    db: str | None = DbOption,
    config: Path | None = ConfigOption,
    conversational: bool = typer.Option(False, help="Chat-message columns instead of text."),
    across_prompts: bool = typer.Option(
        False,
        help="preference: also pair each user's liked and disliked replies to different prompts "
        "(adds a rejected_prompt column; for reward models, not DPO).",
    ),
    since: str | None = typer.Option(
        None,
        help="Only votes given from this UTC date or time on (ISO 8601, e.g. 2026-11-01 or "
        "2026-11-01T12:00); older ones are reported as dropped.",
    ),
    file_format: str = typer.Option("jsonl", help="jsonl | parquet"),
    per_segment: bool = typer.Option(
        False, help="Also write each segment's rows to OUT/segment_ID/ (a config of the card)."
    ),
    push_to_hub: str | None = typer.Option(
        None, help="Also upload OUT as the dataset repo USER/NAME ($HF_TOKEN, $HF_ENDPOINT)."
    ),
    private: bool = typer.Option(False, help="--push-to-hub: create the repo private."),
) -> None:
    """Export feedback in TRL's format to a folder that `load_dataset(OUT)` and `trl dpo
    --dataset_name OUT` read; print what was used and dropped (also in OUT/export_report.json)."""
    from rlhf_persona.feedback.export import export
    from rlhf_persona.feedback.export_files import FILE_FORMATS, push_export, write_export

    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: folder exists and is not empty")
    if file_format not in FILE_FORMATS:
        raise UserError(f"--file-format {file_format!r}: use one of {', '.join(FILE_FORMATS)}")
    if across_prompts and fmt != "preference":
        raise UserError("--across-prompts applies to --format preference only")
    extra: dict = {"across_prompts": True} if across_prompts else {}
    if since is not None:
        extra["since"] = _parse_since(since)
    store = open_store(db, config, must_exist=True)
    try:
        dataset, report = export(store, fmt, conversational=conversational, **extra)
    finally:
        store.close()
    if len(dataset) == 0:  # datasets writes an empty dataset that it cannot load again
        _print_report(f"{fmt}: 0 rows", report)
        raise UserError(f"nothing to export as {fmt}: no feedback row was usable (see above)")
    rows = write_export(dataset, report, out, file_format=file_format, per_segment=per_segment)
    _print_report(f"{fmt}: {report['rows']} rows -> {out}", report)
    for name, count in rows.items():
        if name != "default":
            typer.echo(f"  {name:37s} {count}")
    if push_to_hub:
        typer.echo(f"pushed: {push_export(out, push_to_hub, private=private)}")


def _parse_since(value: str) -> datetime:
    from rlhf_persona.feedback.tables import as_utc

    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise UserError(f"--since {value!r}: not an ISO 8601 date or time") from None


def import_cmd(
    path: Path = typer.Argument(..., help="File or folder to import (see --format)."),
    fmt: str = typer.Option(
        ...,
        "--format",
        help="jsonl (this project's events) | csv | polis (export folder) | trl (TRL / HF "
        "preference, KTO or ratings dataset: .jsonl/.parquet/folder) | messages (OpenAI-style "
        "chat JSONL with feedback) | argilla | label-studio (JSON export) | scores "
        "(Langfuse / LangSmith-style score rows with input and output).",
    ),
    mapping: list[str] | None = typer.Option(
        None,
        "--map",
        help="CSV column=field (user_id, prompt, reply|item, rating|thumb, chosen+rejected, "
        "other_reply+choice, event_id, created_at, comment, reason_tags, profile.KEY); "
        "repeatable.",
    ),  # fmt: skip
    db: str | None = DbOption,
    config: Path | None = ConfigOption,
    prompt: str = typer.Option(
        "", help="CSV: the prompt of rows without a prompt column (whatever column is the reply)."
    ),
    thumb_values: str | None = typer.Option(
        None,
        help="UP,DOWN[,CLEARED] cell values of thumbs, e.g. 1,0 (default: 1/-1, yes/no, "
        "up/down, good/bad, ...; 0 = cleared).",  # fmt: skip
    ),
    rating_scale: str | None = typer.Option(
        None, help="LOW,HIGH of the ratings, mapped onto 1..5 (e.g. 0,10; default 1,5)."
    ),
    reverse_scale: bool = typer.Option(False, help="Ratings: LOW is the best (turned round)."),
    user: str = typer.Option(
        "imported", help="trl/messages/argilla/label-studio/scores: user id of rows without one."
    ),
    question: list[str] | None = typer.Option(
        None,
        help="argilla/label-studio/scores: keep only this question, control (from_name) "
        "or score name; repeatable (default: all that hold feedback).",
    ),  # fmt: skip
    polis_pass: str = typer.Option("abstain", help="Polis pass votes: abstain (0) or skip."),
) -> None:
    """Import feedback; bad rows are listed with their line number and skipped. An import that
    stores nothing into a new SQLite file leaves no file behind."""
    from rlhf_persona.feedback import import_formats, importers
    from rlhf_persona.feedback.db import remove_sqlite_files, sqlite_file

    formats = (*importers.IMPORTERS, *import_formats.FORMATS)
    if fmt not in formats:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(formats)}")
    if fmt == "csv" and not mapping:
        raise UserError("--format csv needs --map COLUMN=FIELD options (e.g. --map score=rating)")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    values = importers.value_mapping(thumb_values, rating_scale, reverse_scale)
    url = store_url(db, config)
    new_file = sqlite_file(url) is not None and not Path(sqlite_file(url)).exists()
    store, report = open_store(url), None
    try:
        if fmt == "jsonl":
            report = importers.import_jsonl(store, path)
        elif fmt == "csv":
            report = importers.import_csv(store, path, importers.parse_mapping(mapping or []),
                                          default_prompt=prompt, values=values)  # fmt: skip
        elif fmt == "polis":
            report = importers.import_polis(store, path, pass_as=polis_pass)
        else:
            report = import_formats.import_records(store, path, fmt, values=values,
                                                   default_user=user,
                                                   questions=question or ())  # fmt: skip
    finally:
        store.close()
        if new_file and (report is None or not report.users):
            remove_sqlite_files(url)  # a failed import leaves no empty database behind
    data = report.to_dict()
    _print_report(f"imported {path}: {report.rows} rows, {report.users} users", data)
    for row in data["bad_rows"][:20]:
        typer.echo(f"  line {row['line']}: {row['reason']}", err=True)
    if len(report.bad_rows) > 20:
        typer.echo(f"  ... and {len(report.bad_rows) - 20} more bad rows", err=True)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if not report.users:
        raise UserError(f"{path}: nothing imported (no valid {fmt} row)")


def _print_report(title: str, report: dict) -> None:
    typer.echo(title)
    for section in ("used", "events", "dropped", "skipped"):
        for reason, count in sorted((report.get(section) or {}).items()):
            typer.echo(f"  {section:8s} {reason:28s} {count}")


@keys_app.command("create")
def keys_create(
    role: str = typer.Option(..., "--role", help="collector (write) | reader (read) | admin"),
    name: str | None = typer.Option(None, help="A label for the key (who uses it)."),
    db: str | None = DbOption,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    store = open_store(db)
    try:
        typer.echo(store.create_api_key(role, name))
    finally:
        store.close()


@keys_app.command("list")
def keys_list(db: str | None = DbOption) -> None:
    """List API keys (prefix, role, name, created, revoked)."""
    store = open_store(db, must_exist=True)
    try:
        for key in store.list_api_keys():
            revoked = f" revoked {key['revoked_at']:%Y-%m-%d}" if key["revoked_at"] else ""
            typer.echo(f"{key['key_prefix']}…  {key['role']:9s} {key['name']}{revoked}")
    finally:
        store.close()


@keys_app.command("revoke")
def keys_revoke(
    prefix: str = typer.Argument(..., help="The key or its first 10 characters."),
    db: str | None = DbOption,
) -> None:
    """Revoke a key (running services notice within api_key_cache_seconds)."""
    store = open_store(db, must_exist=True)
    try:
        if not store.revoke_api_key(prefix):
            raise UserError(f"no active key starting with {prefix[:10]!r}")
    finally:
        store.close()


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Option("head", help="Target revision."), db: str | None = DbOption
) -> None:
    """Apply migrations up to REVISION (opening the store does this to head anyway)."""
    _migrate(db, "upgrade", revision)


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Option(..., help="Target revision (base drops every table)."),
    db: str | None = DbOption,
) -> None:
    """Revert migrations down to REVISION."""
    _migrate(db, "downgrade", revision, must_exist=True)


def _migrate(db: str | None, direction: str, revision: str, must_exist: bool = False) -> None:
    import sqlalchemy as sa

    from rlhf_persona.feedback import migrate
    from rlhf_persona.feedback.db import make_engine, require_existing, unreachable

    url = store_url(db, None)
    if must_exist:
        require_existing(url)
    engine = make_engine(url)
    try:
        getattr(migrate, direction)(engine, revision)
        typer.echo(f"at revision {migrate.current_revision(engine)}")
    except sa.exc.OperationalError as exc:
        raise unreachable(url, exc) from None
    finally:
        engine.dispose()


def register(app: typer.Typer) -> None:
    """Mount the commands on the main CLI (called from ``rlhf_persona.cli``)."""
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.add_typer(keys_app, name="keys")
    app.add_typer(db_app, name="db")
