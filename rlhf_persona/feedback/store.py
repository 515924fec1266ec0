"""``FeedbackStore``: the one API through which users, replies, feedback and segments are
written and read, by the simulator, the importers, the HTTP service and the exporters alike.

Semantics:

- **Idempotency.** ``event_id`` is the client's key: sending an event again is answered
  ``duplicate`` and stores nothing; reusing an id for a different event is an error (409).
- **Current value and history.** Every accepted event stays in ``feedback_events``; the current
  value per (user, reply, other reply, kind) is the event with the latest ``created_at``. A
  changed vote is answered ``updated``.
- **Pairwise** events must compare two different replies to the same prompt.
- **Atomicity.** ``record_events`` writes batches of up to ``batch_size`` events in one
  transaction (bulk ``executemany``); an invalid event is answered ``error`` and leaves no trace,
  while the valid ones of the batch are stored.
- **Privacy.** Comments and reason tags are masked (contact details, card numbers, IBANs; best
  effort) before storage; external ids are stored as keyed hashes; ``delete_user`` removes
  profile, feedback and the replies only that user had, anonymises the row and leaves only a
  tombstone hash that keeps the user out of later imports.

``FeedbackStore`` binds the resource modules (``users``, ``replies``, ``ingest``, ``events``,
``segments``, ``keys``: functions of a ``session.StoreSession``) to one open database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from rlhf_persona.feedback import events as _events
from rlhf_persona.feedback import ingest
from rlhf_persona.feedback import keys as _keys
from rlhf_persona.feedback import replies as _replies
from rlhf_persona.feedback import segments as _segments
from rlhf_persona.feedback import users as _users
from rlhf_persona.feedback.db import resolve_url
from rlhf_persona.feedback.errors import StoreError
from rlhf_persona.feedback.ingest import EventResult
from rlhf_persona.feedback.schemas import FeedbackEventIn
from rlhf_persona.feedback.session import StoreSession
from rlhf_persona.feedback.tables import (
    feedback_current,
    feedback_events,
    replies,
    segment_assignments,
    tombstones,
    users,
)


class FeedbackStore:
    """The feedback database (SQLite file or PostgreSQL URL); migrates the schema on open.

    ``url_or_path``: a SQLAlchemy URL (``sqlite:///f.db``, ``postgresql://...``), a file path,
    or None for ``$RLHF_PERSONA_DATABASE_URL`` / ``./feedback.db``. ``hash_key``: key of the
    keyed hashes (default ``$RLHF_PERSONA_HASH_KEY``, else the documented development key).
    ``must_exist``: a SQLite file that does not exist is a ``UserError`` (read-only commands).
    A database that cannot be reached is a one-line ``UserError`` naming its URL.
    """

    def __init__(
        self,
        url_or_path: Any = None,
        *,
        hash_key: str | None = None,
        migrate_schema: bool = True,
        batch_size: int = 1000,
        must_exist: bool = False,
    ) -> None:
        self.db = StoreSession(
            url_or_path,
            hash_key=hash_key,
            migrate_schema=migrate_schema,
            batch_size=batch_size,
            must_exist=must_exist,
        )
        db = self.db  # what callers read off the store (they never change after opening)
        self.url, self.engine, self.write_lock = db.url, db.engine, db.write_lock
        self.dialect, self.hasher, self.batch_size = db.dialect, db.hasher, db.batch_size

    @classmethod
    def from_config(
        cls, store_config: Any, run_dir: Any = None, url: str | None = None, **kwargs: Any
    ) -> FeedbackStore:
        """The store of an experiment: ``url`` (a ``--db`` option) when given, else ``store.url``
        of the config, else ``$RLHF_PERSONA_DATABASE_URL``, else ``feedback.db`` in ``run_dir``."""
        from pathlib import Path

        default_dir = Path(run_dir) if run_dir is not None else None
        return cls(resolve_url(url or store_config.url, default_dir=default_dir), **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def transaction(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction: committed on success, rolled back on an exception."""
        return self.db.transaction()

    # -- users --------------------------------------------------------------------------------
    def upsert_user(
        self,
        user_id: str | None = None,
        profile: Mapping[str, Any] | None = None,
        external_id: str | None = None,
        *,
        consent: bool | None = None,
        meta: Mapping[str, Any] | None = None,
        merge_profile: bool = False,
    ) -> str:
        """Create a user or update one; returns the ``user_id``.

        Without ``user_id`` it is derived from ``external_id`` (``u_`` + keyed hash), else
        random. A given ``profile`` replaces the stored one (or is merged into it with
        ``merge_profile``); ``meta`` (side data that is not a feature, e.g. a reference label)
        is merged. Raises ``Gone`` for a deleted (tombstoned) user.
        """
        return self.put_user(user_id, profile, external_id, consent, meta, merge_profile)["user_id"]

    def put_user(
        self,
        user_id: str | None,
        profile: Mapping[str, Any] | None,
        external_id: str | None,
        consent: bool | None,
        meta: Mapping[str, Any] | None = None,
        merge_profile: bool = False,
    ) -> dict[str, Any]:
        """``upsert_user`` returning the stored user and whether it was ``created``."""
        row = {"user_id": user_id, "profile": profile, "external_id": external_id,
               "consent": consent, "meta": meta}  # fmt: skip
        [result] = self.upsert_users([row], merge_profile=merge_profile)
        if isinstance(result, StoreError):
            raise result
        return result

    def upsert_users(
        self, rows: Iterable[Mapping[str, Any]], *, merge_profile: bool = False
    ) -> list[dict[str, Any] | StoreError]:
        """Bulk ``upsert_user`` in one transaction: rows are dicts with ``user_id``,
        ``external_id``, ``profile``, ``consent``, ``meta`` (all optional). Returns, per row,
        the stored user (with ``created``) or the ``StoreError`` that refused it."""
        return _users.upsert_users(self.db, rows, merge_profile=merge_profile)

    def update_profile(
        self, user_id: str, changes: Mapping[str, Any] | None = None, *, consent: bool | None = None
    ) -> dict[str, Any]:
        """Merge ``changes`` into the profile (a None value removes the key); returns the user."""
        return _users.update_profile(self.db, user_id, changes, consent=consent)

    def get_user(self, user_id: str) -> dict[str, Any]:
        """One user: user_id, profile, meta, consent, created_at, updated_at, segment."""
        return _users.get_user(self.db, user_id)

    def find_user(self, user_id_or_external: str) -> dict[str, Any]:
        """``get_user`` by store user id, else by external id (an id an importer hashed, such as
        a CSV's ``alice``); NotFound / Gone as ``get_user``."""
        return _users.find_user(self.db, user_id_or_external)

    def users(self) -> list[dict[str, Any]]:
        """All users not deleted: user_id, profile, meta, consent, created_at (oldest first)."""
        return _users.all_users(self.db)

    def list_users(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict], str | None]:
        """A page of users and the cursor of the next page (None at the end)."""
        return _users.list_users(self.db, limit, cursor)

    def is_deleted(self, user_id: str | None = None, external_id: str | None = None) -> bool:
        """Whether a user id or an external id belongs to a deleted user (has a tombstone)."""
        return _users.is_deleted(self.db, user_id, external_id)

    def delete_user(self, user_id: str) -> dict[str, int]:
        """Delete a user's profile, feedback, segment assignments and chats; keep a tombstone
        (keyed hashes of the user id and external id) so that re-imports skip them. Returns
        what was removed.

        Nothing that names the user stays readable: the row keeps only an anonymous id (the
        user id itself may be an e-mail address), replies and prompts that only this user saw
        or rated go too (another user's feedback keeps a reply), and on SQLite deleted content
        is overwritten (``secure_delete``) and the WAL is truncated after the commit.
        """
        return _users.delete_user(self.db, user_id)

    # -- replies ------------------------------------------------------------------------------
    def add_reply(
        self,
        prompt: str,
        reply: str,
        policy: str | None = None,
        segment: int | None = None,
        generation: Mapping[str, Any] | None = None,
        *,
        adapter: str | None = None,
        user_id: str | None = None,
        conversation_id: str | None = None,
    ) -> str:
        """Record a reply (found again by content: the same prompt + text is one row) and,
        with ``user_id``, that it was shown to that user. Returns the ``reply_id``."""
        return self.put_reply(
            dict(
                prompt=prompt,
                reply=reply,
                policy=policy,
                segment=segment,
                generation=generation,
                adapter=adapter,
                user_id=user_id,
                conversation_id=conversation_id,
            )  # fmt: skip
        )["reply_id"]

    def put_reply(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return _replies.put_reply(self.db, fields)

    def put_replies(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``put_reply`` for many rows (e.g. a batch of generated chat replies) in one
        transaction with a few bulk statements, so the write lock is held briefly. Any refused
        row (unknown user, conversation of another user) rolls back all rows."""
        return _replies.put_replies(self.db, rows)

    def get_reply(self, reply_id: str) -> dict[str, Any]:
        return _replies.get_reply(self.db, reply_id)

    def was_shown(self, user_id: str, reply_id: str) -> bool:
        """Whether ``add_reply(..., user_id=...)`` recorded this reply as shown to this user."""
        return _replies.was_shown(self.db, user_id, reply_id)

    # -- feedback events: write ---------------------------------------------------------------
    def record_events(
        self, events: Iterable[Mapping[str, Any] | FeedbackEventIn], *, create_users: bool = False
    ) -> list[EventResult]:
        """Store feedback events (dicts in the shape of ``FeedbackEventIn``); one result each,
        in order: ``created``, ``updated`` (a changed vote), ``duplicate`` (event id seen
        before, same content) or ``error`` (with ``message``, ``field`` and ``code``).

        Batches of ``batch_size`` events are written in one transaction each. Unknown users
        are errors unless ``create_users`` (then they are created with an empty profile,
        except deleted ones, which stay out).
        """
        return ingest.record_events(self.db, events, create_users)

    # -- feedback events: read ----------------------------------------------------------------
    def events(
        self, kind: str | None = None, *, user_id: str | None = None, history: bool = False
    ) -> list[dict[str, Any]]:
        """Feedback as event dicts (the input shape plus ``reply_id``/``other_reply_id``): the
        current value per (user, reply, kind), or with ``history`` every accepted event."""
        return _events.events(self.db, kind, user_id=user_id, history=history)

    def list_events(
        self,
        kind: str | None = None,
        user_id: str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        history: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of ``events(...)`` and the cursor of the next page (None at the end)."""
        return _events.list_events(
            self.db, kind, user_id, limit=limit, cursor=cursor, history=history
        )

    def feedback_rows(self, kinds: Sequence[str]) -> list[Any]:
        """Current feedback of live users, with ``prompt_hash`` and ``consent`` (for export)."""
        return _events.feedback_rows(self.db, kinds)

    # -- segments -----------------------------------------------------------------------------
    def write_segments(
        self, run_id: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]] | Mapping[str, int]
    ) -> int:
        """Store a segmentation run's assignments: rows of (user_id, segment, confidence) (or
        dicts with those keys, or a {user_id: segment} mapping). Returns the number written."""
        return _segments.write_segments(self.db, run_id, rows)

    def current_segments(self, run_id: str | None = None) -> dict[str, int]:
        """user_id -> segment: from ``run_id``, else each user's latest assignment."""
        return _segments.current_segments(self.db, run_id)

    def segment_assignments(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return _segments.assignments(self.db, run_id)

    # -- API keys -----------------------------------------------------------------------------
    def create_api_key(self, role: str, name: str | None = None) -> str:
        """Create an API key with ``role`` (collector: write, reader: read, admin: all); the key
        is returned once and stored only as a hash."""
        return _keys.create_api_key(self.db, role, name)

    def api_key_role(self, key: str) -> str | None:
        """The role of a valid, unrevoked key, else None."""
        return _keys.api_key_role(self.db, key)

    def list_api_keys(self) -> list[dict[str, Any]]:
        return _keys.list_api_keys(self.db)

    def revoke_api_key(self, prefix: str) -> int:
        """Revoke the keys starting with ``prefix`` (the first 10 characters are stored)."""
        return _keys.revoke_api_key(self.db, prefix)

    # -- inspection ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Row counts: users (live), deleted users, replies, events (history), current, ..."""
        queries = {
            "users": sa.select(sa.func.count()).where(users.c.deleted_at.is_(None)),
            "deleted_users": sa.select(sa.func.count()).where(users.c.deleted_at.is_not(None)),
            "replies": sa.select(sa.func.count()).select_from(replies),
            "events": sa.select(sa.func.count()).select_from(feedback_events),
            "current": sa.select(sa.func.count()).select_from(feedback_current),
            "segment_assignments": sa.select(sa.func.count()).select_from(segment_assignments),
            "tombstones": sa.select(sa.func.count()).select_from(tombstones),
        }
        with self.engine.connect() as conn:
            return {name: conn.execute(query).scalar_one() for name, query in queries.items()}
