"""Segment assignments of segmentation runs: write a run, read the current segments.
Functions of a ``StoreSession``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from rlhf_persona.feedback.session import StoreSession
from rlhf_persona.feedback.tables import segment_assignments, users, utcnow


def write_segments(
    db: StoreSession,
    run_id: str,
    rows: Iterable[Sequence[Any] | Mapping[str, Any]] | Mapping[str, int],
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
    with db.transaction() as conn:
        pks = db.user_pks(conn, sorted({uid for uid, _, _ in parsed}))  # <0: deleted
        for uid, _, _ in parsed:
            if pks.get(uid, -1) < 0:
                db.live_user(conn, uid)  # raises NotFound / Gone naming the user
        now = utcnow()
        values = [{"run_id": run_id, "user_pk": pks[uid], "segment": seg, "confidence": conf,
                   "created_at": now} for uid, seg, conf in parsed]  # fmt: skip
        if values:
            stmt = db.insert(segment_assignments)
            stmt = stmt.on_conflict_do_update(
                index_elements=["run_id", "user_pk"],
                set_={"segment": stmt.excluded.segment, "confidence": stmt.excluded.confidence},
            )
            conn.execute(stmt, values)
    return len(values)


def current_segments(db: StoreSession, run_id: str | None = None) -> dict[str, int]:
    """user_id -> segment: from ``run_id``, else each user's latest assignment."""
    sa_ = segment_assignments
    query = sa.select(users.c.user_id, sa_.c.segment).join(users, users.c.id == sa_.c.user_pk)
    query = query.where(users.c.deleted_at.is_(None))
    if run_id is not None:
        query = query.where(sa_.c.run_id == run_id)
    else:
        latest = sa.select(sa.func.max(sa_.c.id)).group_by(sa_.c.user_pk).scalar_subquery()
        query = query.where(sa_.c.id.in_(latest))
    with db.engine.connect() as conn:
        return {row.user_id: row.segment for row in conn.execute(query)}


def assignments(db: StoreSession, run_id: str | None = None) -> list[dict[str, Any]]:
    sa_ = segment_assignments
    query = (
        sa.select(sa_.c.run_id, users.c.user_id, sa_.c.segment, sa_.c.confidence)
        .join(users, users.c.id == sa_.c.user_pk)
        .order_by(sa_.c.id)
    )
    if run_id is not None:
        query = query.where(sa_.c.run_id == run_id)
    with db.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
