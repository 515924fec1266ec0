"""``StoreSession``: the open database that every resource module of the store works through
(engine, write lock, keyed hasher), with the lookups they share.

The store is split by resource, as the FastAPI full-stack template keeps small CRUD modules:
``users``, ``replies``, ``ingest`` (writing feedback events) and ``events`` (reading them),
``segments``, ``keys``. Each is a set of functions taking the session first;
``FeedbackStore`` is the facade that binds them to one session.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from rlhf_persona.feedback import migrate
from rlhf_persona.feedback.db import (
    WriteLock,
    make_engine,
    require_existing,
    resolve_url,
    unreachable,
    writer,
)
from rlhf_persona.feedback.errors import Gone, InvalidInput, NotFound
from rlhf_persona.feedback.privacy import KeyedHasher
from rlhf_persona.feedback.schemas import first_error
from rlhf_persona.feedback.tables import tombstones, users

IN_CHUNK = 900  # keeps every IN (...) list well under SQLite's bound-parameter limit


class StoreSession:
    """An open feedback database (SQLite file or PostgreSQL URL), migrated on open; see
    ``FeedbackStore`` for the arguments. Reads use ``engine.connect()``; every write goes
    through ``transaction()``, which holds the write lock."""

    def __init__(
        self,
        url_or_path: Any = None,
        *,
        hash_key: str | None = None,
        migrate_schema: bool = True,
        batch_size: int = 1000,
        must_exist: bool = False,
    ) -> None:
        self.url = resolve_url(url_or_path)
        if must_exist:
            require_existing(self.url)
        self.engine = make_engine(self.url)
        self._writer = writer(self.engine)
        self.write_lock = WriteLock(self.url)  # shared with the service's WAL checkpointer
        self.dialect = self.engine.dialect.name
        self.hasher = KeyedHasher(hash_key)
        self.batch_size = batch_size
        if migrate_schema:
            try:
                migrate.upgrade(self.engine)
            except sa.exc.OperationalError as exc:  # server down, bad credentials, unwritable
                self.close()
                raise unreachable(self.url, exc) from None

    def close(self) -> None:
        self.engine.dispose()
        self.write_lock.close()

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction: committed on success, rolled back on an exception."""
        with self.write_lock(), self._writer.begin() as conn:
            yield conn

    def insert(self, table: sa.Table) -> Any:
        """An INSERT with the dialect's ``on_conflict_do_*``."""
        return (postgresql if self.dialect == "postgresql" else sqlite).insert(table)

    # -- lookups shared by the resources --------------------------------------------------------
    def live_user(self, conn: sa.Connection, user_id: str) -> Any:
        """The user's row; NotFound, or Gone for a deleted user."""
        row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
        if row is None:
            if self.tombstoned(conn, [self.hasher.user_id(user_id)]):
                raise Gone(f"user {user_id!r} was deleted", "user_id")
            raise NotFound(f"no user {user_id!r}", "user_id")
        if row.deleted_at is not None:
            raise Gone(f"user {user_id!r} was deleted", "user_id")
        return row

    @staticmethod
    def user_pks(conn: sa.Connection, ids: Sequence[str]) -> dict[str, int]:
        """user_id -> pk, negative for deleted users."""
        out: dict[str, int] = {}
        for chunk in chunks(ids):
            query = sa.select(users.c.id, users.c.user_id, users.c.deleted_at).where(
                users.c.user_id.in_(chunk)
            )
            out.update({r.user_id: -r.id if r.deleted_at else r.id for r in conn.execute(query)})
        return out

    @staticmethod
    def tombstoned(conn: sa.Connection, hashes: Sequence[str]) -> set[str]:
        """Which of these keyed id hashes belong to deleted users."""
        found: set[str] = set()
        for chunk in chunks(hashes):
            found.update(
                conn.execute(
                    sa.select(tombstones.c.id_hash).where(tombstones.c.id_hash.in_(chunk))
                ).scalars()
            )
        return found


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_MAX_PK = 2**63  # row ids are signed 64-bit integers on both databases


def encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{pk}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, pk = text.split(":")
        if prefix != "v1" or not pk.isdigit() or not 0 <= int(pk) < _MAX_PK:
            raise ValueError
        return int(pk)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("not a cursor returned by this API", "cursor") from None


def invalid(exc: ValidationError) -> InvalidInput:
    field, message = first_error(exc)
    return InvalidInput(message, field)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
