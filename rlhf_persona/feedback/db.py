"""Database URLs and engines: SQLite (the embedded default) or PostgreSQL.

SQLite connections get WAL (readers never block the writer), foreign keys on, a busy timeout,
``secure_delete`` (deleted rows are zeroed on disk), ``synchronous=NORMAL`` (in WAL mode a
committed transaction survives a killed process; only an OS crash or power loss can lose the
last commits), and a WAL checkpoint every 10,000 pages.
Write transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the busy
timeout instead of failing with "database is locked" when a read transaction tries to upgrade
to a write; and writers of one SQLite file queue on a kernel file lock first (``WriteLock``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from rlhf_persona.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: writers queue on SQLite's busy timeout alone
    fcntl = None  # type: ignore[assignment]

DATABASE_URL_ENV = "RLHF_PERSONA_DATABASE_URL"
DEFAULT_SQLITE_FILE = "feedback.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_WAL_CHECKPOINT_PAGES = 10_000
SQLITE_CACHE_KIB = 65_536  # per connection, used as pages are read


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


def require_existing(url: str) -> None:
    """Raise a ``UserError`` when ``url`` is a SQLite file that does not exist: commands that only
    read a store must not leave an empty database behind a mistyped path."""
    path = sqlite_file(url)
    if path is not None and not Path(path).is_file():
        raise UserError(
            f"{path}: no feedback database there (nothing was created); pass --db with an "
            "existing store, or import or collect feedback first"
        )


def unreachable(url: str, exc: Exception) -> UserError:
    """One line naming the database (password hidden) and the driver's first line of why."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    parsed = sa.engine.make_url(url)
    shown = describe_url(parsed.set(drivername=parsed.get_backend_name()))  # as users write it
    return UserError(f"cannot open the database {shown}: {reason[0] if reason else type(exc)}")


def remove_sqlite_files(url: str) -> None:
    """Delete a SQLite database with its WAL, shared-memory and writer-lock files."""
    path = sqlite_file(url)
    if path is not None:
        for suffix in ("", "-wal", "-shm", "-journal", "-writer.lock"):
            Path(path + suffix).unlink(missing_ok=True)


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
        # Deleted content is overwritten with zeros, not left in free pages (user deletion).
        cursor.execute("PRAGMA secure_delete=ON")
        # Checkpoint the WAL every ~40 MB instead of ~4 MB: index pages that many commits touch
        # are copied to the database once per checkpoint, so fewer checkpoints write less.
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_PAGES}")
        # Index pages of a growing store (random reply ids) outgrow the 2 MiB default cache
        # (a cache lasts while no other process commits: SQLite empties it when one has).
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine, marked so that its transactions take the write lock up front."""
    return engine.execution_options(write=True)


def sqlite_file(url: str | sa.URL) -> str | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = sa.engine.make_url(url)
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return path if path and path != ":memory:" else None


class WriteLock:
    """Serialises the write transactions on one SQLite file across threads and processes
    (``serve --workers N``, a training run beside the service). A waiting writer sleeps on a
    kernel file lock (``<db>-writer.lock``) and wakes the moment the holder commits, where
    SQLite's busy handler would poll with sleeps of up to 100 ms. A no-op for PostgreSQL,
    in-memory databases and systems without ``fcntl``; the busy timeout still applies there."""

    def __init__(self, url: str) -> None:
        path = sqlite_file(url)
        self.path = Path(path + "-writer.lock") if path else None
        self._threads = threading.Lock()
        self._fd: int | None = None
        _LOCKS.add(self)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._threads:
            if self.path is None or fcntl is None:
                yield
                return
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _after_fork(self) -> None:
        # The child must not share the parent's lock: a flock belongs to the open file (which
        # fork shares), and a thread lock held at fork time would stay held in the child.
        self._threads = threading.Lock()
        self.close()


_LOCKS: weakref.WeakSet[WriteLock] = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: [lock._after_fork() for lock in list(_LOCKS)])


class WalCheckpointer:
    """Moves SQLite's WAL checkpoints off the write path (used by the service): the engine's
    connections stop checkpointing when a commit crosses the threshold, and this thread runs a
    PASSIVE checkpoint every ``interval_s`` instead, which neither waits for nor blocks writers.
    Otherwise the commit that crosses it copies the whole WAL into the database while every
    writer (all workers) waits: that doubled the p99 latency of feedback posts.

    PASSIVE checkpoints alone never let the WAL start over while writers keep appending (it
    grew to 350 MB in 80,000 events and writes slowed down 40%), so once the WAL holds more than
    ``restart_frames`` pages the thread takes the write lock and RESTARTs it: by then nearly
    every page is copied, so writers wait for the last few only. A no-op for PostgreSQL and
    in-memory databases."""

    def __init__(
        self,
        engine: Engine,
        write_lock: WriteLock | None = None,
        interval_s: float = 0.5,
        restart_frames: int = 4096,
    ) -> None:
        self.engine = engine
        self.write_lock = write_lock
        self.interval_s = interval_s
        self.restart_frames = restart_frames
        self.enabled = sqlite_file(engine.url) is not None
        self.checkpoints = self.restarts = 0
        self.last: tuple[int, int, int] | None = None  # (busy, WAL frames, frames checkpointed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)

    def start(self) -> None:
        if not self.enabled:
            return
        event.listen(self.engine, "connect", _no_autocheckpoint)
        self.engine.dispose()  # pooled connections reopen without autocheckpoint
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.checkpoint()
            event.remove(self.engine, "connect", _no_autocheckpoint)
            self.engine.dispose()  # the store's later connections checkpoint by themselves

    def checkpoint(self, mode: str = "PASSIVE") -> None:
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})").one()
        self.last, self.checkpoints = tuple(row), self.checkpoints + 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.checkpoint()
                if self.last[1] > self.restart_frames and self.write_lock is not None:
                    with self.write_lock():
                        self.checkpoint("RESTART")
                    self.restarts += 1
            except sa.exc.DBAPIError:  # e.g. another process checkpointing: next time
                continue


def truncate_wal(engine: Engine, write_lock: WriteLock | None = None, tries: int = 20) -> bool:
    """Copy the whole WAL into the database and truncate it to zero bytes (SQLite files only),
    so that content deleted by the last commit is no longer in the WAL either. Waits for
    readers of older snapshots (a few tries); returns whether it completed."""
    if sqlite_file(engine.url) is None:
        return True
    for attempt in range(tries):
        lock = write_lock() if write_lock is not None else contextlib.nullcontext()
        with lock, engine.connect() as conn:
            busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()[0]
        if not busy:
            return True
        time.sleep(0.05 * (attempt + 1))
    return False


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


def describe_url(url: str | sa.URL) -> str:
    """The URL with any password hidden, for messages and logs."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)
