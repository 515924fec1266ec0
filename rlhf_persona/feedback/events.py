"""Reading feedback events: the current value per (user, reply, kind) or the whole history,
as dicts, pages or export rows. The write path is ``ingest``. Functions of a ``StoreSession``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from rlhf_persona.feedback.session import StoreSession, decode_cursor, encode_cursor, iso
from rlhf_persona.feedback.tables import feedback_current, feedback_events, replies, users


def _events_query(history: bool) -> sa.Select:
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
        query = query.join(feedback_current, feedback_current.c.event_pk == feedback_events.c.id)
    return query


def event_dict(row: Any) -> dict[str, Any]:
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
        "created_at": iso(row.created_at),
    }


def events(
    db: StoreSession, kind: str | None = None, *, user_id: str | None = None, history: bool = False
) -> list[dict[str, Any]]:
    """Feedback as event dicts (the input shape plus ``reply_id``/``other_reply_id``): the
    current value per (user, reply, kind), or with ``history`` every accepted event."""
    query = _filtered(_events_query(history), kind, user_id)
    key = feedback_events.c.id
    with db.engine.connect() as conn:
        return [event_dict(row) for row in conn.execute(query.order_by(key))]


def list_events(
    db: StoreSession,
    kind: str | None = None,
    user_id: str | None = None,
    *,
    limit: int = 100,
    cursor: str | None = None,
    history: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of ``events(...)`` and the cursor of the next page (None at the end)."""
    pk = feedback_events.c.id
    query = _filtered(_events_query(history), kind, user_id)
    query = query.where(pk > decode_cursor(cursor)).order_by(pk).limit(limit + 1)
    with db.engine.connect() as conn:
        rows = conn.execute(query).all()
    items = [event_dict(row) for row in rows[:limit]]
    return items, encode_cursor(rows[limit - 1].id) if len(rows) > limit else None


def feedback_rows(db: StoreSession, kinds: Sequence[str]) -> list[Any]:
    """Current feedback of live users, with ``prompt_hash`` and ``consent`` (for export)."""
    query = _events_query(history=False).where(feedback_events.c.kind.in_(list(kinds)))
    with db.engine.connect() as conn:
        return conn.execute(query.order_by(feedback_events.c.id)).all()


def _filtered(query: sa.Select, kind: str | None, user_id: str | None) -> sa.Select:
    if kind is not None:
        query = query.where(feedback_events.c.kind == kind)
    if user_id is not None:
        query = query.where(users.c.user_id == user_id)
    return query
