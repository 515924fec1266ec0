"""feedback_current without the foreign key (and index) to its event.

The pointer row of each current value was written with a foreign-key check and an index on
``event_pk`` that SQLite keeps beside the table's primary key: more than half the cost of the
upsert on the write path. Nothing looks rows up by event; they go when their user is deleted
(``FeedbackStore.delete_user`` deletes them before the events) and are written only by the
store, in the transaction of their event.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FK_NAME = "fk_feedback_current_event_pk_feedback_events"
INDEX_NAME = "ix_feedback_current_event_pk"
COLUMNS = "user_pk, reply_pk, other_key, kind, event_pk, created_at, updated_at"


def _create(name: str, with_fk: bool) -> None:
    fk = [sa.ForeignKeyConstraint(["event_pk"], ["feedback_events.id"], name=FK_NAME,
                                  ondelete="CASCADE")] if with_fk else []  # fmt: skip
    op.create_table(
        name,
        sa.Column("user_pk", sa.BigInteger(), nullable=False),
        sa.Column("reply_pk", sa.BigInteger(), nullable=False),
        sa.Column("other_key", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event_pk", BIG_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *fk,
        sa.PrimaryKeyConstraint(
            "user_pk", "reply_pk", "other_key", "kind", name="pk_feedback_current"
        ),
        sqlite_with_rowid=False,
    )


def _rebuild_sqlite(with_fk: bool) -> None:
    # SQLite cannot drop or add a foreign key: copy into a new table (the same WITHOUT ROWID
    # layout, which a batch-mode copy would not keep).
    _create("feedback_current_new", with_fk)
    op.execute(
        f"INSERT INTO feedback_current_new ({COLUMNS}) SELECT {COLUMNS} FROM feedback_current"
    )
    op.drop_table("feedback_current")
    op.rename_table("feedback_current_new", "feedback_current")


def upgrade() -> None:
    op.drop_index(INDEX_NAME, table_name="feedback_current")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_fk=False)
    else:
        op.drop_constraint(FK_NAME, "feedback_current", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_fk=True)
    else:
        op.create_foreign_key(
            FK_NAME, "feedback_current", "feedback_events", ["event_pk"], ["id"],
            ondelete="CASCADE",
        )  # fmt: skip
    op.create_index(INDEX_NAME, "feedback_current", ["event_pk"])
