"""SQLAlchemy 2 tables of the feedback store (the schema the Alembic migrations create).

Tables:

- ``users``: pseudonymous ``user_id``, keyed hash of the external id, profile (JSON, the
  features segmentation may use), ``meta`` (JSON side data that is *not* a feature, e.g. Polis's
  own opinion group kept as a reference label), consent, created/updated/deleted times.
- ``tombstones``: keyed hashes of deleted users' ids; nothing else is kept about them.
- ``conversations`` and ``reply_views``: which replies were shown to which user, in which chat.
- ``replies``: prompt, reply text and what produced it (policy, adapter, segment, generation
  settings); ``reply_id`` is derived from the content hash, so the same text is one row.
- ``feedback_events``: every accepted event (the history), keyed by the client's ``event_id``.
- ``feedback_current``: the current value per (user, reply, other reply, kind), pointing at the
  latest event; a changed vote moves the pointer and the older event stays in the history.
- ``segment_assignments``: (segmentation run, user, segment, confidence).
- ``api_clients``: hashed API keys with their role.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, in UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# BIGINT primary keys on PostgreSQL; SQLite only autoincrements "INTEGER PRIMARY KEY".
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A naive datetime read as UTC (SQLite gives timestamps back naive, PostgreSQL aware)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# Named constraints, so that later migrations can alter them (SQLite batch mode needs names).
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


def _fk(target: str) -> sa.ForeignKey:
    return sa.ForeignKey(target, ondelete="CASCADE")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    external_id_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    consent: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()


class Tombstone(Base):
    __tablename__ = "tombstones"

    id_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    user_pk: Mapped[int | None] = mapped_column(_fk("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Reply(Base):
    __tablename__ = "replies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reply_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prompt_hash: Mapped[str] = mapped_column(sa.String(64))
    prompt: Mapped[str] = mapped_column(sa.Text)
    text: Mapped[str] = mapped_column(sa.Text)
    policy: Mapped[str | None] = mapped_column(sa.String(200))
    adapter: Mapped[str | None] = mapped_column(sa.String(200))
    segment: Mapped[int | None] = mapped_column()
    generation: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReplyView(Base):
    __tablename__ = "reply_views"
    __table_args__ = (sa.UniqueConstraint("user_pk", "reply_pk", name="uq_reply_views_user_reply"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_pk: Mapped[int] = mapped_column(_fk("users.id"))
    reply_pk: Mapped[int] = mapped_column(_fk("replies.id"), index=True)
    conversation_pk: Mapped[int | None] = mapped_column(_fk("conversations.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeedbackEvent(Base):
    __tablename__ = "feedback_events"
    __table_args__ = (
        sa.CheckConstraint("kind IN ('thumbs', 'rating', 'pairwise', 'comment')", name="kind"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    user_pk: Mapped[int] = mapped_column(_fk("users.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    reply_pk: Mapped[int] = mapped_column(_fk("replies.id"), index=True)
    other_reply_pk: Mapped[int | None] = mapped_column(_fk("replies.id"))
    value: Mapped[int | None] = mapped_column()
    reason_tags: Mapped[list[str] | None] = mapped_column(JSONType)
    comment: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    payload_hash: Mapped[str] = mapped_column(sa.String(64))


class FeedbackCurrent(Base):
    """One row per (user, reply, other reply, kind): which event holds the current value.

    Keyed by that tuple (a WITHOUT ROWID table on SQLite: one B-tree, no extra unique index),
    since this table is written once per event on the hot path; reply first, so that the rows
    of new replies (growing pks) are appended rather than spread over every user's pages.
    Pairwise keys are stored in canonical order (smaller reply pk first) so that "A vs B" and
    "B vs A" by the same user are one choice; ``other_key`` is 0 without a pair. No foreign
    key to the event (its check and index were most of the write's cost): the store writes a
    row in its event's transaction and deletes it before the event (``delete_user``).
    """

    __tablename__ = "feedback_current"
    __table_args__ = {"sqlite_with_rowid": False}

    reply_pk: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    user_pk: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    other_key: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    event_pk: Mapped[int] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SegmentAssignment(Base):
    __tablename__ = "segment_assignments"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "user_pk", name="uq_segment_assignments_run_user"),
        sa.Index("ix_segment_assignments_user_pk_id", "user_pk", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(128))
    user_pk: Mapped[int] = mapped_column(_fk("users.id"))
    segment: Mapped[int] = mapped_column()
    confidence: Mapped[float | None] = mapped_column(sa.Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiClient(Base):
    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    key_prefix: Mapped[str] = mapped_column(sa.String(16))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


metadata = Base.metadata
users = User.__table__
tombstones = Tombstone.__table__
conversations = Conversation.__table__
replies = Reply.__table__
reply_views = ReplyView.__table__
feedback_events = FeedbackEvent.__table__
feedback_current = FeedbackCurrent.__table__
segment_assignments = SegmentAssignment.__table__
api_clients = ApiClient.__table__
