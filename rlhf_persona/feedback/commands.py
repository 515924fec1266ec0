"""CLI of the feedback store: ``serve``, ``export``, ``import``, ``keys ...``, ``db ...``.

The database is ``--db`` (URL or SQLite path), else ``store.url`` of ``--config``, else
``$RLHF_PERSONA_DATABASE_URL``, else ``./feedback.db``. Heavy imports happen inside the
commands so that ``rlhf-persona --help`` stays fast.
"""

from __future__ import annotations

import json
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


def _url(db: str | None, config: Path | None) -> str:
    from rlhf_persona.feedback.db import resolve_url

    if db is None and config is not None:
        from rlhf_persona.config import load_config

        db = load_config(config).store.url
    return resolve_url(db)


def _open(db: str | None, config: Path | None = None):
    from rlhf_persona.feedback.store import FeedbackStore

    return FeedbackStore(_url(db, config))


def serve(
    db: str | None = DbOption,
    config: Path | None = ConfigOption,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    access_log: bool = typer.Option(False, help="Log every request (slower)."),
    policy: str | None = typer.Option(
        None, help="Chat: base policy spec (default embedded:tiny) when there is no registry."
    ),
    policy_registry: Path | None = typer.Option(
        None, help="Chat: adapter registry folder; users get their segment's policy."
    ),
    ab_share: float | None = typer.Option(
        None, min=0, max=1, help="Chat: share of turns with two replies (A/B), default 0.2."
    ),
    preload_policy: bool = typer.Option(
        False, help="Chat: load the policy at start (else on the first chat request)."
    ),
    best_of_n: int | None = typer.Option(
        None,
        help="Chat: send the best of N sampled replies per request as ranked by "
        "--best-of-n-reward (default 1 = off; cost ≈ N × one generation).",
    ),
    best_of_n_reward: Path | None = typer.Option(
        None,
        help="Chat: saved reward model folder ranking the best-of-n candidates (a user-level "
        "reward scores per user; or a segment RewardModel / FeatureReward).",
    ),
    dev: bool = typer.Option(
        False,
        "--dev",
        help="Local trial: allow the public development hash key (loopback hosts only). "
        "Without it, RLHF_PERSONA_HASH_KEY must be a real secret (docs/security.md).",
    ),
) -> None:
    """Run the feedback HTTP API under uvicorn (OpenAPI docs at /docs, chat page at /chat)."""
    import os

    import uvicorn

    from rlhf_persona.feedback.chat.commands import chat_env
    from rlhf_persona.feedback.service import startup
    from rlhf_persona.feedback.service.settings import ServiceSettings

    url = _url(db, config)
    os.environ.update(
        chat_env(policy, policy_registry, ab_share, preload_policy, best_of_n, best_of_n_reward)
    )
    settings = ServiceSettings(**({"dev": True} if dev else {}))
    token_secret = os.environ.get(startup.TOKEN_SECRET_ENV)
    startup.check_secrets(settings.hash_key, token_secret, settings.dev, host)
    startup.check_port_free(host, port)
    _open(url).close()  # migrate once, before the workers start
    os.environ["RLHF_PERSONA_DATABASE_URL"] = url  # read by every worker's app factory
    os.environ[startup.SUPERVISOR_ENV] = str(os.getpid())  # workers exit when it is gone
    if settings.dev:
        os.environ[startup.DEV_ENV] = "1"
        os.environ.setdefault("RLHF_PERSONA_QUIET_DEV_KEY", "1")  # said once, here
        typer.echo("serving with --dev: development keys, loopback only", err=True)
    uvicorn.run(
        "rlhf_persona.feedback.service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )


def export_cmd(
    fmt: str = typer.Option(..., "--format", help="preference | kto | ratings"),
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset to (save_to_disk)."),
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
    jsonl: bool = typer.Option(False, help="Also write OUT/data.jsonl."),
) -> None:
    """Export feedback as a Hugging Face dataset in TRL's format; print what was used and
    dropped (the report is also written to OUT/export_report.json)."""
    from rlhf_persona.feedback.export import export

    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: folder exists and is not empty")
    if across_prompts and fmt != "preference":
        raise UserError("--across-prompts applies to --format preference only")
    extra: dict = {"across_prompts": True} if across_prompts else {}
    if since is not None:
        extra["since"] = _parse_since(since)
    store = _open(db, config)
    try:
        dataset, report = export(store, fmt, conversational=conversational, **extra)
    finally:
        store.close()
    if len(dataset) == 0:  # datasets writes an empty dataset that it cannot load again
        _print_report(f"{fmt}: 0 rows", report)
        raise UserError(f"nothing to export as {fmt}: no feedback row was usable (see above)")
    dataset.save_to_disk(str(out))
    (out / "export_report.json").write_text(json.dumps(report, indent=2))
    if jsonl:
        dataset.to_json(str(out / "data.jsonl"), lines=True)
    _print_report(f"{fmt}: {report['rows']} rows -> {out}", report)


def _parse_since(value: str) -> datetime:
    from rlhf_persona.feedback.models import as_utc

    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise UserError(f"--since {value!r}: not an ISO 8601 date or time") from None


def import_cmd(
    path: Path = typer.Argument(..., help="JSONL/CSV file, or a Polis export folder."),
    fmt: str = typer.Option(..., "--format", help="jsonl | csv | polis"),
    mapping: list[str] | None = typer.Option(
        None,
        "--map",
        help="CSV column=field (user_id, prompt, reply|item, rating|thumb, "
        "event_id, created_at, comment, reason_tags, profile.KEY); repeatable.",
    ),  # fmt: skip
    db: str | None = DbOption,
    config: Path | None = ConfigOption,
    prompt: str = typer.Option("", help="CSV: prompt of the rated items when none is mapped."),
    polis_pass: str = typer.Option("abstain", help="Polis pass votes: abstain (0) or skip."),
) -> None:
    """Import feedback; bad rows are listed with their line number and skipped."""
    from rlhf_persona.feedback import importers

    if fmt not in importers.IMPORTERS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(importers.IMPORTERS)}")
    if fmt == "csv" and not mapping:
        raise UserError("--format csv needs --map COLUMN=FIELD options (e.g. --map score=rating)")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    store = _open(db, config)
    try:
        if fmt == "jsonl":
            report = importers.import_jsonl(store, path)
        elif fmt == "csv":
            report = importers.import_csv(
                store, path, importers.parse_mapping(mapping or []), default_prompt=prompt
            )
        else:
            report = importers.import_polis(store, path, pass_as=polis_pass)
    finally:
        store.close()
    data = report.to_dict()
    _print_report(f"imported {path}: {report.rows} rows, {report.users} users", data)
    for row in data["bad_rows"][:20]:
        typer.echo(f"  line {row['line']}: {row['reason']}", err=True)
    if len(report.bad_rows) > 20:
        typer.echo(f"  ... and {len(report.bad_rows) - 20} more bad rows", err=True)


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
    store = _open(db)
    try:
        typer.echo(store.create_api_key(role, name))
    finally:
        store.close()


@keys_app.command("list")
def keys_list(db: str | None = DbOption) -> None:
    """List API keys (prefix, role, name, created, revoked)."""
    store = _open(db)
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
    store = _open(db)
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
    from rlhf_persona.feedback import migrate
    from rlhf_persona.feedback.db import make_engine

    engine = make_engine(_url(db, None))
    migrate.upgrade(engine, revision)
    typer.echo(f"at revision {migrate.current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Option(..., help="Target revision (base drops every table)."),
    db: str | None = DbOption,
) -> None:
    """Revert migrations down to REVISION."""
    from rlhf_persona.feedback import migrate
    from rlhf_persona.feedback.db import make_engine

    engine = make_engine(_url(db, None))
    migrate.downgrade(engine, revision)
    typer.echo(f"at revision {migrate.current_revision(engine)}")


def register(app: typer.Typer) -> None:
    """Mount the commands on the main CLI (called from ``rlhf_persona.cli``)."""
    app.command("serve")(serve)
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.add_typer(keys_app, name="keys")
    app.add_typer(db_app, name="db")
