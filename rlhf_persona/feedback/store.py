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
"""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite

from rlhf_persona.feedback import ingest, migrate
from rlhf_persona.feedback.db import (
    WriteLock,
    make_engine,
    require_existing,
    resolve_url,
    truncate_wal,
    unreachable,
    writer,
)
from rlhf_persona.feedback.errors import Conflict, Gone, InvalidInput, NotFound, StoreError
from rlhf_persona.feedback.ingest import EventResult
from rlhf_persona.feedback.privacy import KeyedHasher, hash_api_key
from rlhf_persona.feedback.schemas import (
    FeedbackEventIn,
    ReplyIn,
    UserIn,
    first_error,
    prompt_hash,
    reply_id_for,
)
from rlhf_persona.feedback.tables import (
    api_clients,
    conversations,
    feedback_current,
    feedback_events,
    replies,
    reply_views,
    segment_assignments,
    tombstones,
    users,
    utcnow,
)

log = logging.getLogger("rlhf_persona.feedback")
ROLES = ("collector", "reader", "admin")
_IN_CHUNK = 900  # keeps every IN (...) list well under SQLite's bound-parameter limit


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_MAX_PK = 2**63  # row ids are signed 64-bit integers on both databases


def _encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> int:
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


def _invalid(exc: ValidationError) -> InvalidInput:
    field, message = first_error(exc)
    return InvalidInput(message, field)


_USER_COLUMNS = ("user_id", "external_id_hash", "profile", "meta", "consent", "created_at",
                 "updated_at")  # fmt: skip


def _user_row(user: Mapping[str, Any]) -> dict[str, Any]:
    return {key: user[key] for key in _USER_COLUMNS}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
        self.engine.dispose()
        self.write_lock.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedbackStore({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction: committed on success, rolled back on an exception."""
        with self.write_lock(), self._writer.begin() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql if self.dialect == "postgresql" else sqlite).insert(table)

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
        rows = list(rows)
        results: list[Any] = [None] * len(rows)
        prepared = []
        for index, row in enumerate(rows):
            try:
                data = UserIn(**{k: row.get(k) for k in ("user_id", "external_id", "profile",
                                                          "consent")})  # fmt: skip
            except ValidationError as exc:
                results[index] = _invalid(exc)
                continue
            ext = self.hasher.external_id(data.external_id) if data.external_id else None
            uid = data.user_id or (
                self.hasher.pseudonym(data.external_id)
                if data.external_id
                else "u_" + uuid.uuid4().hex[:20]
            )
            prepared.append((index, data, uid, ext, dict(row.get("meta") or {})))
        if prepared:
            with self.transaction() as conn:
                self._put_users(conn, prepared, results, merge_profile)
        return results

    def _put_users(self, conn, prepared: list, results: list, merge_profile: bool) -> None:
        uids = sorted({uid for _, _, uid, _, _ in prepared})
        exts = sorted({ext for _, _, _, ext, _ in prepared if ext})
        gone = self._tombstoned(conn, [self.hasher.user_id(u) for u in uids] + exts)
        stored: dict[str, dict[str, Any]] = {}
        owners: dict[str, str] = {}
        for chunk in _chunks(uids):
            for row in conn.execute(sa.select(users).where(users.c.user_id.in_(chunk))):
                stored[row.user_id] = dict(row._mapping)
        for chunk in _chunks(exts):
            query = sa.select(users.c.user_id, users.c.external_id_hash).where(
                users.c.external_id_hash.in_(chunk)
            )
            owners.update({row.external_id_hash: row.user_id for row in conn.execute(query)})
        now = utcnow()
        created: set[str] = set()
        changed: set[str] = set()
        for index, data, uid, ext, meta in prepared:
            try:
                if self.hasher.user_id(uid) in gone or (ext and ext in gone):
                    raise Gone(f"user {uid!r} was deleted and cannot be re-created", "user_id")
                if ext and owners.get(ext, uid) != uid:
                    raise Conflict(f"already linked to user {owners[ext]!r}", "external_id")
                user = stored.get(uid)
                if user is None:
                    user = stored[uid] = {
                        "user_id": uid, "external_id_hash": ext, "profile": data.profile or {},
                        "meta": meta, "created_at": now, "updated_at": now, "deleted_at": None,
                        "consent": True if data.consent is None else data.consent,
                    }  # fmt: skip
                    created.add(uid)
                else:
                    self._apply_user_changes(user, data, ext, meta, merge_profile, now)
                    changed.add(uid)
                if ext:
                    owners[ext] = uid
                results[index] = {**user, "created": uid in created}
            except StoreError as exc:
                results[index] = exc
        if created:
            conn.execute(users.insert(), [_user_row(stored[uid]) for uid in sorted(created)])
        if changed - created:
            stmt = users.update().where(users.c.id == sa.bindparam("pk"))
            conn.execute(
                stmt,
                [
                    {"pk": stored[uid]["id"], **_user_row(stored[uid])}
                    for uid in sorted(changed - created)
                ],  # fmt: skip
            )

    @staticmethod
    def _apply_user_changes(user, data: UserIn, ext, meta, merge_profile: bool, now) -> None:
        if user["deleted_at"] is not None:
            raise Gone(f"user {user['user_id']!r} was deleted", "user_id")
        if ext and user["external_id_hash"] not in (None, ext):
            raise Conflict("user is linked to a different external id", "external_id")
        if data.profile is not None:
            base = dict(user["profile"] or {}) if merge_profile else {}
            user["profile"] = {**base, **data.profile}
        if data.consent is not None:
            user["consent"] = data.consent
        if meta:
            user["meta"] = {**(user["meta"] or {}), **meta}
        if ext:
            user["external_id_hash"] = ext
        user["updated_at"] = now

    def update_profile(
        self, user_id: str, changes: Mapping[str, Any] | None = None, *, consent: bool | None = None
    ) -> dict[str, Any]:
        """Merge ``changes`` into the profile (a None value removes the key); returns the user."""
        with self.transaction() as conn:
            row = self._live_user(conn, user_id)
            profile = dict(row.profile or {})
            for key, value in (changes or {}).items():
                if value is None:
                    profile.pop(key, None)
                else:
                    profile[key] = value
            try:
                UserIn(profile=profile)
            except ValidationError as exc:
                raise _invalid(exc) from None
            values: dict[str, Any] = {"profile": profile, "updated_at": utcnow()}
            if consent is not None:
                values["consent"] = consent
            conn.execute(users.update().where(users.c.id == row.id), values)
        return self.get_user(user_id)

    def get_user(self, user_id: str) -> dict[str, Any]:
        """One user: user_id, profile, meta, consent, created_at, updated_at, segment."""
        with self.engine.connect() as conn:
            row = self._live_user(conn, user_id)
            segment = conn.execute(
                sa.select(segment_assignments.c.segment)
                .where(segment_assignments.c.user_pk == row.id)
                .order_by(segment_assignments.c.id.desc())
                .limit(1)
            ).scalar()
        return {**self._user_dict(row), "segment": segment}

    def find_user(self, user_id_or_external: str) -> dict[str, Any]:
        """``get_user`` by store user id, else by external id (an id an importer hashed, such as
        a CSV's ``alice``); NotFound / Gone as ``get_user``."""
        try:
            return self.get_user(user_id_or_external)
        except NotFound:
            ext = self.hasher.external_id(user_id_or_external)
            with self.engine.connect() as conn:
                found = conn.execute(
                    sa.select(users.c.user_id).where(users.c.external_id_hash == ext)
                ).scalar()
            if found is None:
                raise
            return self.get_user(found)

    def users(self) -> list[dict[str, Any]]:
        """All users not deleted: user_id, profile, meta, consent, created_at (oldest first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(users).where(users.c.deleted_at.is_(None)).order_by(users.c.id)
            )
            return [self._user_dict(row) for row in rows]

    def list_users(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[dict], str | None]:
        """A page of users and the cursor of the next page (None at the end)."""
        after = _decode_cursor(cursor)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(users)
                .where(users.c.deleted_at.is_(None), users.c.id > after)
                .order_by(users.c.id)
                .limit(limit + 1)
            ).all()
        items = [self._user_dict(row) for row in rows[:limit]]
        return items, _encode_cursor(rows[limit - 1].id) if len(rows) > limit else None

    @staticmethod
    def _user_dict(row: Any) -> dict[str, Any]:
        return {
            "user_id": row.user_id,
            "profile": row.profile or {},
            "meta": row.meta or {},
            "consent": row.consent,
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
        }

    def _live_user(self, conn: sa.Connection, user_id: str) -> Any:
        row = conn.execute(sa.select(users).where(users.c.user_id == user_id)).first()
        if row is None:
            if self._tombstoned(conn, [self.hasher.user_id(user_id)]):
                raise Gone(f"user {user_id!r} was deleted", "user_id")
            raise NotFound(f"no user {user_id!r}", "user_id")
        if row.deleted_at is not None:
            raise Gone(f"user {user_id!r} was deleted", "user_id")
        return row

    @staticmethod
    def _user_pks(conn: sa.Connection, ids: list[str]) -> dict[str, int]:
        """user_id -> pk, negative for deleted users."""
        out: dict[str, int] = {}
        for chunk in _chunks(ids):
            query = sa.select(users.c.id, users.c.user_id, users.c.deleted_at).where(
                users.c.user_id.in_(chunk)
            )
            out.update({r.user_id: -r.id if r.deleted_at else r.id for r in conn.execute(query)})
        return out

    def _tombstoned(self, conn: sa.Connection, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(hashes):
            found.update(
                conn.execute(
                    sa.select(tombstones.c.id_hash).where(tombstones.c.id_hash.in_(chunk))
                ).scalars()
            )
        return found

    def _check_not_tombstoned(self, conn: sa.Connection, uid: str, ext_hash: str | None) -> None:
        hashes = [self.hasher.user_id(uid)] + ([ext_hash] if ext_hash else [])
        if self._tombstoned(conn, hashes):
            raise Gone(f"user {uid!r} was deleted and cannot be re-created", "user_id")

    def is_deleted(self, user_id: str | None = None, external_id: str | None = None) -> bool:
        """Whether a user id or an external id belongs to a deleted user (has a tombstone)."""
        hashes = [self.hasher.user_id(user_id)] if user_id else []
        if external_id:
            hashes.append(self.hasher.external_id(external_id))
        with self.engine.connect() as conn:
            return bool(self._tombstoned(conn, hashes))

    # -- privacy: deletion --------------------------------------------------------------------
    @staticmethod
    def _delete_current_of(user_pk: int) -> sa.Delete:
        """The user's current-value rows, found through their events (the table is keyed reply
        first; a row's reply is its event's reply or, for a pair, possibly the other one)."""
        events = sa.select(feedback_events.c.reply_pk).where(feedback_events.c.user_pk == user_pk)
        others = sa.select(feedback_events.c.other_reply_pk).where(
            feedback_events.c.user_pk == user_pk, feedback_events.c.other_reply_pk.is_not(None)
        )
        return feedback_current.delete().where(
            feedback_current.c.reply_pk.in_(events.union(others)),
            feedback_current.c.user_pk == user_pk,
        )

    def delete_user(self, user_id: str) -> dict[str, int]:
        """Delete a user's profile, feedback, segment assignments and chats; keep a tombstone
        (keyed hashes of the user id and external id) so that re-imports skip them. Returns
        what was removed.

        Nothing that names the user stays readable: the row keeps only an anonymous id (the
        user id itself may be an e-mail address), replies and prompts that only this user saw
        or rated go too (another user's feedback keeps a reply), and on SQLite deleted content
        is overwritten (``secure_delete``) and the WAL is truncated after the commit.
        """
        with self.transaction() as conn:
            row = self._live_user(conn, user_id)
            pk = row.id
            touched = self._replies_of(conn, pk)
            conn.execute(self._delete_current_of(pk))
            counts = {
                "events": conn.execute(
                    feedback_events.delete().where(feedback_events.c.user_pk == pk)
                ).rowcount,
                "segment_assignments": conn.execute(
                    segment_assignments.delete().where(segment_assignments.c.user_pk == pk)
                ).rowcount,
            }
            conn.execute(reply_views.delete().where(reply_views.c.user_pk == pk))
            conn.execute(conversations.delete().where(conversations.c.user_pk == pk))
            counts["replies"] = self._delete_orphan_replies(conn, sorted(touched))
            hashes = [self.hasher.user_id(user_id)]
            if row.external_id_hash:
                hashes.append(row.external_id_hash)
            conn.execute(
                self._insert(tombstones).on_conflict_do_nothing(),
                [{"id_hash": h, "created_at": utcnow()} for h in hashes],
            )
            conn.execute(
                users.update().where(users.c.id == pk),
                {
                    "user_id": f"deleted-{uuid.uuid4().hex}",
                    "profile": {},
                    "meta": {},
                    "external_id_hash": None,
                    "consent": False,
                    "deleted_at": utcnow(),
                    "updated_at": utcnow(),
                },  # fmt: skip
            )
        if not truncate_wal(self.engine, self.write_lock):
            log.warning("the WAL was not truncated after deleting a user (readers kept old "
                        "snapshots): deleted text stays in it until overwritten")  # fmt: skip
        return counts

    @staticmethod
    def _replies_of(conn: sa.Connection, user_pk: int) -> set[int]:
        """Replies the user was shown or gave feedback on (either side of a pair)."""
        queries = [
            sa.select(reply_views.c.reply_pk).where(reply_views.c.user_pk == user_pk),
            sa.select(feedback_events.c.reply_pk).where(feedback_events.c.user_pk == user_pk),
            sa.select(feedback_events.c.other_reply_pk).where(
                feedback_events.c.user_pk == user_pk, feedback_events.c.other_reply_pk.is_not(None)
            ),
        ]
        return set(conn.execute(sa.union(*queries)).scalars())

    def _delete_orphan_replies(self, conn: sa.Connection, reply_pks: list[int]) -> int:
        deleted = 0
        for chunk in _chunks(reply_pks):
            used = sa.union(
                sa.select(feedback_events.c.reply_pk).where(feedback_events.c.reply_pk.in_(chunk)),
                sa.select(feedback_events.c.other_reply_pk).where(
                    feedback_events.c.other_reply_pk.in_(chunk)
                ),
                sa.select(reply_views.c.reply_pk).where(reply_views.c.reply_pk.in_(chunk)),
            )
            still_used = set(conn.execute(used).scalars())
            orphans = [pk for pk in chunk if pk not in still_used]
            if orphans:
                deleted += conn.execute(replies.delete().where(replies.c.id.in_(orphans))).rowcount
        return deleted

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
        try:
            data = ReplyIn(**fields)
        except ValidationError as exc:
            raise _invalid(exc) from None
        phash = prompt_hash(data.prompt)
        rid = reply_id_for(data.prompt, data.reply, phash)
        now = utcnow()
        with self.transaction() as conn:
            user = self._live_user(conn, data.user_id) if data.user_id else None
            conn.execute(
                self._insert(replies).on_conflict_do_nothing(index_elements=["reply_id"]),
                {
                    "reply_id": rid,
                    "prompt_hash": phash,
                    "prompt": data.prompt,
                    "text": data.reply,
                    "policy": data.policy,
                    "adapter": data.adapter,
                    "segment": data.segment,
                    "generation": data.generation,
                    "created_at": now,
                },  # fmt: skip
            )
            row = conn.execute(sa.select(replies).where(replies.c.reply_id == rid)).one()
            if user is not None:
                conv_pk = self._conversation_pk(conn, data.conversation_id, user.id)
                conn.execute(
                    self._insert(reply_views).on_conflict_do_nothing(),
                    {
                        "user_pk": user.id,
                        "reply_pk": row.id,
                        "conversation_pk": conv_pk,
                        "created_at": now,
                    },  # fmt: skip
                )
        return {**self._reply_dict(row), "created": row.created_at == now}

    def put_replies(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``put_reply`` for many rows (e.g. a batch of generated chat replies) in one
        transaction with a few bulk statements, so the write lock is held briefly. Any refused
        row (unknown user, conversation of another user) rolls back all rows."""
        try:
            data = [ReplyIn(**fields) for fields in rows]
        except ValidationError as exc:
            raise _invalid(exc) from None
        hashes = [prompt_hash(d.prompt) for d in data]
        ids = [reply_id_for(d.prompt, d.reply, h) for d, h in zip(data, hashes, strict=True)]
        now = utcnow()
        new = {
            rid: {"reply_id": rid, "prompt_hash": h, "prompt": d.prompt, "text": d.reply,
                  "policy": d.policy, "adapter": d.adapter, "segment": d.segment,
                  "generation": d.generation, "created_at": now}
            for d, h, rid in zip(data, hashes, ids, strict=True)
        }  # fmt: skip
        with self.transaction() as conn:
            user_ids = sorted({d.user_id for d in data if d.user_id})
            pks = self._user_pks(conn, user_ids)
            for uid in user_ids:
                if pks.get(uid, -1) < 0:
                    self._live_user(conn, uid)  # raises NotFound / Gone naming the user
            conn.execute(
                self._insert(replies).on_conflict_do_nothing(index_elements=["reply_id"]),
                list(new.values()),
            )
            stored = {}
            for chunk in _chunks(list(new)):
                query = sa.select(replies).where(replies.c.reply_id.in_(chunk))
                stored.update({row.reply_id: row for row in conn.execute(query)})
            views = {}
            for d, rid in zip(data, ids, strict=True):
                if d.user_id:
                    pk = pks[d.user_id]
                    conv = self._conversation_pk(conn, d.conversation_id, pk)
                    views[(pk, rid)] = {"user_pk": pk, "reply_pk": stored[rid].id,
                                        "conversation_pk": conv, "created_at": now}  # fmt: skip
            if views:
                view_insert = self._insert(reply_views).on_conflict_do_nothing()
                conn.execute(view_insert, list(views.values()))
        return [{**self._reply_dict(stored[rid]), "created": stored[rid].created_at == now}
                for rid in ids]  # fmt: skip

    def _conversation_pk(
        self, conn: sa.Connection, conversation_id: str | None, user_pk: int
    ) -> int | None:
        if conversation_id is None:
            return None
        conn.execute(
            self._insert(conversations).on_conflict_do_nothing(index_elements=["conversation_id"]),
            {"conversation_id": conversation_id, "user_pk": user_pk, "created_at": utcnow()},
        )
        row = conn.execute(
            sa.select(conversations.c.id, conversations.c.user_pk).where(
                conversations.c.conversation_id == conversation_id
            )
        ).one()
        if row.user_pk != user_pk:
            raise Conflict("belongs to another user", "conversation_id")
        return row.id

    def get_reply(self, reply_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(replies).where(replies.c.reply_id == reply_id)).first()
        if row is None:
            raise NotFound(f"no reply {reply_id!r}", "reply_id")
        return self._reply_dict(row)

    def was_shown(self, user_id: str, reply_id: str) -> bool:
        """Whether ``add_reply(..., user_id=...)`` recorded this reply as shown to this user."""
        query = (
            sa.select(reply_views.c.id)
            .join(users, users.c.id == reply_views.c.user_pk)
            .join(replies, replies.c.id == reply_views.c.reply_pk)
            .where(users.c.user_id == user_id, replies.c.reply_id == reply_id)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    @staticmethod
    def _reply_dict(row: Any) -> dict[str, Any]:
        return {
            "reply_id": row.reply_id,
            "prompt": row.prompt,
            "reply": row.text,
            "policy": row.policy,
            "adapter": row.adapter,
            "segment": row.segment,
            "generation": row.generation,
            "created_at": _iso(row.created_at),
        }

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
        return ingest.record_events(self, events, create_users)

    # -- feedback events: read ----------------------------------------------------------------
    def _events_query(self, history: bool) -> sa.Select:
        other = replies.alias("other")
        query = (
            sa.select(
                feedback_events.c.id,
                feedback_events.c.event_id,
                users.c.user_id,
                feedback_events.c.kind,
                replies.c.prompt,
                replies.c.text.label("reply"),
                replies.c.reply_id,
                replies.c.prompt_hash,
                other.c.text.label("other_reply"),
                other.c.reply_id.label("other_reply_id"),
                feedback_events.c.value,
                feedback_events.c.reason_tags,
                feedback_events.c.comment,
                feedback_events.c.created_at,
                users.c.consent,
            )
            .join(users, users.c.id == feedback_events.c.user_pk)
            .join(replies, replies.c.id == feedback_events.c.reply_pk)
            .outerjoin(other, other.c.id == feedback_events.c.other_reply_pk)
            .where(users.c.deleted_at.is_(None))
        )
        if not history:
            query = query.join(
                feedback_current, feedback_current.c.event_pk == feedback_events.c.id
            )
        return query

    @staticmethod
    def _event_dict(row: Any) -> dict[str, Any]:
        return {
            "event_id": row.event_id,
            "user_id": row.user_id,
            "kind": row.kind,
            "prompt": row.prompt,
            "reply": row.reply,
            "reply_id": row.reply_id,
            "other_reply": row.other_reply,
            "other_reply_id": row.other_reply_id,
            "value": row.value,
            "reason_tags": list(row.reason_tags or []),
            "comment": row.comment,
            "created_at": _iso(row.created_at),
        }

    def events(
        self, kind: str | None = None, *, user_id: str | None = None, history: bool = False
    ) -> list[dict[str, Any]]:
        """Feedback as event dicts (the input shape plus ``reply_id``/``other_reply_id``): the
        current value per (user, reply, kind), or with ``history`` every accepted event."""
        query = self._filtered(self._events_query(history), kind, user_id)
        key = feedback_events.c.id
        with self.engine.connect() as conn:
            return [self._event_dict(row) for row in conn.execute(query.order_by(key))]

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
        pk = feedback_events.c.id
        query = self._filtered(self._events_query(history), kind, user_id)
        query = query.where(pk > _decode_cursor(cursor)).order_by(pk).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [self._event_dict(row) for row in rows[:limit]]
        return items, _encode_cursor(rows[limit - 1].id) if len(rows) > limit else None

    def feedback_rows(self, kinds: Sequence[str]) -> list[Any]:
        """Current feedback of live users, with ``prompt_hash`` and ``consent`` (for export)."""
        query = self._events_query(history=False).where(feedback_events.c.kind.in_(list(kinds)))
        with self.engine.connect() as conn:
            return conn.execute(query.order_by(feedback_events.c.id)).all()

    @staticmethod
    def _filtered(query: sa.Select, kind: str | None, user_id: str | None) -> sa.Select:
        if kind is not None:
            query = query.where(feedback_events.c.kind == kind)
        if user_id is not None:
            query = query.where(users.c.user_id == user_id)
        return query

    # -- segments -----------------------------------------------------------------------------
    def write_segments(
        self, run_id: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]] | Mapping[str, int]
    ) -> int:
        """Store a segmentation run's assignments: rows of (user_id, segment, confidence) (or
        dicts with those keys, or a {user_id: segment} mapping). Returns the number written."""
        if isinstance(rows, Mapping):
            rows = [(uid, seg, None) for uid, seg in rows.items()]
        parsed = []
        for row in rows:
            if isinstance(row, Mapping):
                row = (row["user_id"], row["segment"], row.get("confidence"))
            uid, seg, conf = (tuple(row) + (None,))[:3]
            parsed.append((str(uid), int(seg), None if conf is None else float(conf)))
        with self.transaction() as conn:
            pks = self._user_pks(conn, sorted({uid for uid, _, _ in parsed}))  # <0: deleted
            for uid, _, _ in parsed:
                if pks.get(uid, -1) < 0:
                    self._live_user(conn, uid)  # raises NotFound / Gone naming the user
            now = utcnow()
            values = [{"run_id": run_id, "user_pk": pks[uid], "segment": seg, "confidence": conf,
                       "created_at": now} for uid, seg, conf in parsed]  # fmt: skip
            if values:
                stmt = self._insert(segment_assignments)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["run_id", "user_pk"],
                    set_={"segment": stmt.excluded.segment, "confidence": stmt.excluded.confidence},
                )
                conn.execute(stmt, values)
        return len(values)

    def current_segments(self, run_id: str | None = None) -> dict[str, int]:
        """user_id -> segment: from ``run_id``, else each user's latest assignment."""
        sa_ = segment_assignments
        query = sa.select(users.c.user_id, sa_.c.segment).join(users, users.c.id == sa_.c.user_pk)
        query = query.where(users.c.deleted_at.is_(None))
        if run_id is not None:
            query = query.where(sa_.c.run_id == run_id)
        else:
            latest = sa.select(sa.func.max(sa_.c.id)).group_by(sa_.c.user_pk).scalar_subquery()
            query = query.where(sa_.c.id.in_(latest))
        with self.engine.connect() as conn:
            return {row.user_id: row.segment for row in conn.execute(query)}

    def segment_assignments(self, run_id: str | None = None) -> list[dict[str, Any]]:
        sa_ = segment_assignments
        query = (
            sa.select(sa_.c.run_id, users.c.user_id, sa_.c.segment, sa_.c.confidence)
            .join(users, users.c.id == sa_.c.user_pk)
            .order_by(sa_.c.id)
        )
        if run_id is not None:
            query = query.where(sa_.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # -- API keys -----------------------------------------------------------------------------
    def create_api_key(self, role: str, name: str | None = None) -> str:
        """Create an API key with ``role`` (collector: write, reader: read, admin: all); the key
        is returned once and stored only as a hash."""
        if role not in ROLES:
            raise InvalidInput(f"must be one of {', '.join(ROLES)}, not {role!r}", "role")
        key = "rp_" + secrets.token_urlsafe(32)
        with self.transaction() as conn:
            conn.execute(
                api_clients.insert(),
                {
                    "name": name or role,
                    "key_prefix": key[:10],
                    "key_hash": hash_api_key(key),
                    "role": role,
                    "created_at": utcnow(),
                },  # fmt: skip
            )
        return key

    def api_key_role(self, key: str) -> str | None:
        """The role of a valid, unrevoked key, else None."""
        query = sa.select(api_clients.c.role).where(
            api_clients.c.key_hash == hash_api_key(key), api_clients.c.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def list_api_keys(self) -> list[dict[str, Any]]:
        query = sa.select(
            api_clients.c.name, api_clients.c.key_prefix, api_clients.c.role,
            api_clients.c.created_at, api_clients.c.revoked_at,
        ).order_by(api_clients.c.id)  # fmt: skip
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def revoke_api_key(self, prefix: str) -> int:
        """Revoke the keys starting with ``prefix`` (the first 10 characters are stored)."""
        with self.transaction() as conn:
            return conn.execute(
                api_clients.update()
                .where(api_clients.c.key_prefix == prefix[:10], api_clients.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount

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
