"""Initial schema: users, tombstones, conversations, replies, feedback, segments, API clients.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types (a migration must not change when tables.py does).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _pk(table: str) -> tuple[sa.Column, sa.PrimaryKeyConstraint]:
    return sa.Column("id", BIG_ID, nullable=False), sa.PrimaryKeyConstraint(
        "id", name=f"pk_{table}"
    )


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column],
        [f"{target}.id" if "." not in target else target],
        name=f"fk_{table}_{column}_{target.split('.')[0]}",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "api_clients",
        *_pk("api_clients"),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        sa.UniqueConstraint("key_hash", name="uq_api_clients_key_hash"),
    )
    op.create_table(
        "replies",
        *_pk("replies"),
        sa.Column("reply_id", sa.String(64), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("policy", sa.String(200), nullable=True),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("segment", sa.Integer(), nullable=True),
        sa.Column("generation", JSON, nullable=True),
        _ts("created_at"),
        sa.UniqueConstraint("reply_id", name="uq_replies_reply_id"),
    )
    op.create_table(
        "tombstones",
        sa.Column("id_hash", sa.String(64), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id_hash", name="pk_tombstones"),
    )
    op.create_table(
        "users",
        *_pk("users"),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("external_id_hash", sa.String(64), nullable=True),
        sa.Column("profile", JSON, nullable=False),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("consent", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("deleted_at", nullable=True),
        sa.UniqueConstraint("external_id_hash", name="uq_users_external_id_hash"),
        sa.UniqueConstraint("user_id", name="uq_users_user_id"),
    )
    op.create_table(
        "conversations",
        *_pk("conversations"),
        sa.Column("conversation_id", sa.String(128), nullable=False),
        sa.Column("user_pk", BIG_ID, nullable=True),
        _ts("created_at"),
        _fk("conversations", "user_pk", "users"),
        sa.UniqueConstraint("conversation_id", name="uq_conversations_conversation_id"),
    )
    op.create_index("ix_conversations_user_pk", "conversations", ["user_pk"])
    op.create_table(
        "feedback_events",
        *_pk("feedback_events"),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("user_pk", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reply_pk", BIG_ID, nullable=False),
        sa.Column("other_reply_pk", BIG_ID, nullable=True),
        sa.Column("value", sa.Integer(), nullable=True),
        sa.Column("reason_tags", JSON, nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("received_at"),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.CheckConstraint(
            "kind IN ('thumbs', 'rating', 'pairwise', 'comment')", name="ck_feedback_events_kind"
        ),
        _fk("feedback_events", "other_reply_pk", "replies"),
        _fk("feedback_events", "reply_pk", "replies"),
        _fk("feedback_events", "user_pk", "users"),
        sa.UniqueConstraint("event_id", name="uq_feedback_events_event_id"),
    )
    op.create_index("ix_feedback_events_reply_pk", "feedback_events", ["reply_pk"])
    op.create_index("ix_feedback_events_user_pk", "feedback_events", ["user_pk"])
    op.create_table(
        "segment_assignments",
        *_pk("segment_assignments"),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("user_pk", BIG_ID, nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        _ts("created_at"),
        _fk("segment_assignments", "user_pk", "users"),
        sa.UniqueConstraint("run_id", "user_pk", name="uq_segment_assignments_run_user"),
    )
    op.create_index("ix_segment_assignments_user_pk_id", "segment_assignments", ["user_pk", "id"])
    op.create_table(
        "feedback_current",
        sa.Column("user_pk", sa.BigInteger(), nullable=False),
        sa.Column("reply_pk", sa.BigInteger(), nullable=False),
        sa.Column("other_key", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event_pk", BIG_ID, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _fk("feedback_current", "event_pk", "feedback_events"),
        sa.PrimaryKeyConstraint(
            "user_pk", "reply_pk", "other_key", "kind", name="pk_feedback_current"
        ),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_feedback_current_event_pk", "feedback_current", ["event_pk"])
    op.create_table(
        "reply_views",
        *_pk("reply_views"),
        sa.Column("user_pk", BIG_ID, nullable=False),
        sa.Column("reply_pk", BIG_ID, nullable=False),
        sa.Column("conversation_pk", BIG_ID, nullable=True),
        _ts("created_at"),
        _fk("reply_views", "conversation_pk", "conversations"),
        _fk("reply_views", "reply_pk", "replies"),
        _fk("reply_views", "user_pk", "users"),
        sa.UniqueConstraint("user_pk", "reply_pk", name="uq_reply_views_user_reply"),
    )
    op.create_index("ix_reply_views_conversation_pk", "reply_views", ["conversation_pk"])
    op.create_index("ix_reply_views_reply_pk", "reply_views", ["reply_pk"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes.
    for table in (
        "reply_views",
        "feedback_current",
        "segment_assignments",
        "feedback_events",
        "conversations",
        "users",
        "tombstones",
        "replies",
        "api_clients",
    ):
        op.drop_table(table)
