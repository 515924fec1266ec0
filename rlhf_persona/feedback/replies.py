"""Replies shown to users: stored by content id (the same prompt + text is one row), with
which user saw them in which conversation. Functions of a ``StoreSession``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError

from rlhf_persona.feedback.errors import Conflict, NotFound
from rlhf_persona.feedback.schemas import ReplyIn, prompt_hash, reply_id_for
from rlhf_persona.feedback.session import StoreSession, chunks, invalid, iso
from rlhf_persona.feedback.tables import conversations, replies, reply_views, users, utcnow


def put_reply(db: StoreSession, fields: Mapping[str, Any]) -> dict[str, Any]:
    try:
        data = ReplyIn(**fields)
    except ValidationError as exc:
        raise invalid(exc) from None
    phash = prompt_hash(data.prompt)
    rid = reply_id_for(data.prompt, data.reply, phash)
    now = utcnow()
    with db.transaction() as conn:
        user = db.live_user(conn, data.user_id) if data.user_id else None
        conn.execute(
            db.insert(replies).on_conflict_do_nothing(index_elements=["reply_id"]),
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
            conv_pk = _conversation_pk(db, conn, data.conversation_id, user.id)
            conn.execute(
                db.insert(reply_views).on_conflict_do_nothing(),
                {
                    "user_pk": user.id,
                    "reply_pk": row.id,
                    "conversation_pk": conv_pk,
                    "created_at": now,
                },  # fmt: skip
            )
    return {**reply_dict(row), "created": row.created_at == now}


def put_replies(db: StoreSession, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``put_reply`` for many rows (e.g. a batch of generated chat replies) in one
    transaction with a few bulk statements, so the write lock is held briefly. Any refused
    row (unknown user, conversation of another user) rolls back all rows."""
    try:
        data = [ReplyIn(**fields) for fields in rows]
    except ValidationError as exc:
        raise invalid(exc) from None
    hashes = [prompt_hash(d.prompt) for d in data]
    ids = [reply_id_for(d.prompt, d.reply, h) for d, h in zip(data, hashes, strict=True)]
    now = utcnow()
    new = {
        rid: {"reply_id": rid, "prompt_hash": h, "prompt": d.prompt, "text": d.reply,
              "policy": d.policy, "adapter": d.adapter, "segment": d.segment,
              "generation": d.generation, "created_at": now}
        for d, h, rid in zip(data, hashes, ids, strict=True)
    }  # fmt: skip
    with db.transaction() as conn:
        user_ids = sorted({d.user_id for d in data if d.user_id})
        pks = db.user_pks(conn, user_ids)
        for uid in user_ids:
            if pks.get(uid, -1) < 0:
                db.live_user(conn, uid)  # raises NotFound / Gone naming the user
        conn.execute(
            db.insert(replies).on_conflict_do_nothing(index_elements=["reply_id"]),
            list(new.values()),
        )
        stored = {}
        for chunk in chunks(list(new)):
            query = sa.select(replies).where(replies.c.reply_id.in_(chunk))
            stored.update({row.reply_id: row for row in conn.execute(query)})
        views = {}
        for d, rid in zip(data, ids, strict=True):
            if d.user_id:
                pk = pks[d.user_id]
                conv = _conversation_pk(db, conn, d.conversation_id, pk)
                views[(pk, rid)] = {"user_pk": pk, "reply_pk": stored[rid].id,
                                    "conversation_pk": conv, "created_at": now}  # fmt: skip
        if views:
            view_insert = db.insert(reply_views).on_conflict_do_nothing()
            conn.execute(view_insert, list(views.values()))
    return [{**reply_dict(stored[rid]), "created": stored[rid].created_at == now}
            for rid in ids]  # fmt: skip


def _conversation_pk(
    db: StoreSession, conn: sa.Connection, conversation_id: str | None, user_pk: int
) -> int | None:
    if conversation_id is None:
        return None
    conn.execute(
        db.insert(conversations).on_conflict_do_nothing(index_elements=["conversation_id"]),
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


def get_reply(db: StoreSession, reply_id: str) -> dict[str, Any]:
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(replies).where(replies.c.reply_id == reply_id)).first()
    if row is None:
        raise NotFound(f"no reply {reply_id!r}", "reply_id")
    return reply_dict(row)


def was_shown(db: StoreSession, user_id: str, reply_id: str) -> bool:
    """Whether ``add_reply(..., user_id=...)`` recorded this reply as shown to this user."""
    query = (
        sa.select(reply_views.c.id)
        .join(users, users.c.id == reply_views.c.user_pk)
        .join(replies, replies.c.id == reply_views.c.reply_pk)
        .where(users.c.user_id == user_id, replies.c.reply_id == reply_id)
    )
    with db.engine.connect() as conn:
        return conn.execute(query).first() is not None


def reply_dict(row: Any) -> dict[str, Any]:
    return {
        "reply_id": row.reply_id,
        "prompt": row.prompt,
        "reply": row.text,
        "policy": row.policy,
        "adapter": row.adapter,
        "segment": row.segment,
        "generation": row.generation,
        "created_at": iso(row.created_at),
    }
