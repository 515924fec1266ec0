"""Database URLs and engines: SQLite (the embedded default) or PostgreSQL.

SQLite connections get WAL (readers never block the writer), foreign keys on, a busy timeout,
and ``synchronous=NORMAL`` (in WAL mode a committed transaction survives a killed process; only
an OS crash or power loss can lose the last commits). Write transactions start with
``BEGIN IMMEDIATE`` so that concurrent writers queue on the busy timeout instead of failing with
"database is locked" when a read transaction tries to upgrade to a write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from rlhf_persona.errors import UserError

DATABASE_URL_ENV = "RLHF_PERSONA_DATABASE_URL"
DEFAULT_SQLITE_FILE = "feedback.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def resolve_url(
    url_or_path: str | os.PathLike[str] | None = None, default_dir: Path | None = None
) -> str:
    """A SQLAlchemy URL from a URL, a file path, ``$RLHF_PERSONA_DATABASE_URL``, or the default
    SQLite file ``feedback.db`` (in ``default_dir``, else the working directory)."""
    value = os.fspath(url_or_path) if url_or_path is not None else os.environ.get(DATABASE_URL_ENV)
    if not value:
        value = str((default_dir or Path.cwd()) / DEFAULT_SQLITE_FILE)
    if "://" not in value:
        if value == ":memory:":
            return "sqlite://"
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    # Plain postgresql:// URLs use psycopg 3 (the installed driver), not psycopg2.
    for prefix in ("postgresql://", "postgres://"):
        if value.startswith(prefix):
            return "postgresql+psycopg://" + value[len(prefix) :]
    return value


def make_engine(url: str) -> Engine:
    """An engine with the pragmas / pool settings above; ``url`` as given by ``resolve_url``."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise UserError(f"database URL {url!r} is not valid: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        return sa.create_engine(parsed, pool_size=8, max_overflow=8, pool_pre_ping=True)
    raise UserError(f"database URL {url!r}: only sqlite and postgresql are supported")


def _sqlite_engine(url: sa.URL) -> Engine:
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, else each sees its own DB
    else:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event emit BEGIN
        cursor = dbapi_conn.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine, marked so that its transactions take the write lock up front."""
    return engine.execution_options(write=True)


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)
