"""Users of the store: create and update profiles in bulk, read them, page through them,
and delete one (privacy: see ``FeedbackStore``). Functions of a ``StoreSession``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from rlhf_persona.feedback.db import truncate_wal
from rlhf_persona.feedback.errors import Conflict, Gone, NotFound, StoreError
from rlhf_persona.feedback.schemas import UserIn
from rlhf_persona.feedback.session import (
    StoreSession,
    chunks,
    decode_cursor,
    encode_cursor,
    invalid,
    iso,
)
from rlhf_persona.feedback.tables import (
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
_USER_COLUMNS = ("user_id", "external_id_hash", "profile", "meta", "consent", "created_at",
                 "updated_at")  # fmt: skip


def _user_row(user: Mapping[str, Any]) -> dict[str, Any]:
    return {key: user[key] for key in _USER_COLUMNS}


def upsert_users(
    db: StoreSession, rows: Iterable[Mapping[str, Any]], *, merge_profile: bool = False
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
            results[index] = invalid(exc)
            continue
        ext = db.hasher.external_id(data.external_id) if data.external_id else None
        uid = data.user_id or (
            db.hasher.pseudonym(data.external_id)
            if data.external_id
            else "u_" + uuid.uuid4().hex[:20]
        )
        prepared.append((index, data, uid, ext, dict(row.get("meta") or {})))
    if prepared:
        with db.transaction() as conn:
            _put_users(db, conn, prepared, results, merge_profile)
    return results


def _put_users(db: StoreSession, conn, prepared: list, results: list, merge_profile: bool) -> None:
    uids = sorted({uid for _, _, uid, _, _ in prepared})
    exts = sorted({ext for _, _, _, ext, _ in prepared if ext})
    gone = db.tombstoned(conn, [db.hasher.user_id(u) for u in uids] + exts)
    stored: dict[str, dict[str, Any]] = {}
    owners: dict[str, str] = {}
    for chunk in chunks(uids):
        for row in conn.execute(sa.select(users).where(users.c.user_id.in_(chunk))):
            stored[row.user_id] = dict(row._mapping)
    for chunk in chunks(exts):
        query = sa.select(users.c.user_id, users.c.external_id_hash).where(
            users.c.external_id_hash.in_(chunk)
        )
        owners.update({row.external_id_hash: row.user_id for row in conn.execute(query)})
    now = utcnow()
    created: set[str] = set()
    changed: set[str] = set()
    for index, data, uid, ext, meta in prepared:
        try:
            if db.hasher.user_id(uid) in gone or (ext and ext in gone):
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
                _apply_user_changes(user, data, ext, meta, merge_profile, now)
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
    db: StoreSession,
    user_id: str,
    changes: Mapping[str, Any] | None = None,
    *,
    consent: bool | None = None,
) -> dict[str, Any]:
    """Merge ``changes`` into the profile (a None value removes the key); returns the user."""
    with db.transaction() as conn:
        row = db.live_user(conn, user_id)
        profile = dict(row.profile or {})
        for key, value in (changes or {}).items():
            if value is None:
                profile.pop(key, None)
            else:
                profile[key] = value
        try:
            UserIn(profile=profile)
        except ValidationError as exc:
            raise invalid(exc) from None
        values: dict[str, Any] = {"profile": profile, "updated_at": utcnow()}
        if consent is not None:
            values["consent"] = consent
        conn.execute(users.update().where(users.c.id == row.id), values)
    return get_user(db, user_id)


def get_user(db: StoreSession, user_id: str) -> dict[str, Any]:
    """One user: user_id, profile, meta, consent, created_at, updated_at, segment."""
    with db.engine.connect() as conn:
        row = db.live_user(conn, user_id)
        segment = conn.execute(
            sa.select(segment_assignments.c.segment)
            .where(segment_assignments.c.user_pk == row.id)
            .order_by(segment_assignments.c.id.desc())
            .limit(1)
        ).scalar()
    return {**user_dict(row), "segment": segment}


def find_user(db: StoreSession, user_id_or_external: str) -> dict[str, Any]:
    """``get_user`` by store user id, else by external id (an id an importer hashed, such as
    a CSV's ``alice``); NotFound / Gone as ``get_user``."""
    try:
        return get_user(db, user_id_or_external)
    except NotFound:
        ext = db.hasher.external_id(user_id_or_external)
        with db.engine.connect() as conn:
            found = conn.execute(
                sa.select(users.c.user_id).where(users.c.external_id_hash == ext)
            ).scalar()
        if found is None:
            raise
        return get_user(db, found)


def all_users(db: StoreSession) -> list[dict[str, Any]]:
    """All users not deleted: user_id, profile, meta, consent, created_at (oldest first)."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(users).where(users.c.deleted_at.is_(None)).order_by(users.c.id)
        )
        return [user_dict(row) for row in rows]


def list_users(
    db: StoreSession, limit: int = 100, cursor: str | None = None
) -> tuple[list[dict], str | None]:
    """A page of users and the cursor of the next page (None at the end)."""
    after = decode_cursor(cursor)
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.select(users)
            .where(users.c.deleted_at.is_(None), users.c.id > after)
            .order_by(users.c.id)
            .limit(limit + 1)
        ).all()
    items = [user_dict(row) for row in rows[:limit]]
    return items, encode_cursor(rows[limit - 1].id) if len(rows) > limit else None


def user_dict(row: Any) -> dict[str, Any]:
    return {
        "user_id": row.user_id,
        "profile": row.profile or {},
        "meta": row.meta or {},
        "consent": row.consent,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def is_deleted(
    db: StoreSession, user_id: str | None = None, external_id: str | None = None
) -> bool:
    """Whether a user id or an external id belongs to a deleted user (has a tombstone)."""
    hashes = [db.hasher.user_id(user_id)] if user_id else []
    if external_id:
        hashes.append(db.hasher.external_id(external_id))
    with db.engine.connect() as conn:
        return bool(db.tombstoned(conn, hashes))


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


def delete_user(db: StoreSession, user_id: str) -> dict[str, int]:
    """Delete a user's profile, feedback, segment assignments and chats; keep a tombstone
    (keyed hashes of the user id and external id) so that re-imports skip them. Returns
    what was removed.

    Nothing that names the user stays readable: the row keeps only an anonymous id (the
    user id itself may be an e-mail address), replies and prompts that only this user saw
    or rated go too (another user's feedback keeps a reply), and on SQLite deleted content
    is overwritten (``secure_delete``) and the WAL is truncated after the commit.
    """
    with db.transaction() as conn:
        row = db.live_user(conn, user_id)
        pk = row.id
        touched = _replies_of(conn, pk)
        conn.execute(_delete_current_of(pk))
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
        counts["replies"] = _delete_orphan_replies(conn, sorted(touched))
        hashes = [db.hasher.user_id(user_id)]
        if row.external_id_hash:
            hashes.append(row.external_id_hash)
        conn.execute(
            db.insert(tombstones).on_conflict_do_nothing(),
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
    if not truncate_wal(db.engine, db.write_lock):
        log.warning("the WAL was not truncated after deleting a user (readers kept old "
                    "snapshots): deleted text stays in it until overwritten")  # fmt: skip
    return counts


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


def _delete_orphan_replies(conn: sa.Connection, reply_pks: list[int]) -> int:
    deleted = 0
    for chunk in chunks(reply_pks):
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
