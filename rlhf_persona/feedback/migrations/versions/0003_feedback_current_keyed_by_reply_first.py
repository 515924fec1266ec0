"""feedback_current keyed by (reply, user, other reply, kind) instead of user first.

New feedback is mostly about new replies, whose primary keys grow: keyed reply first, its
current-value rows are appended at the end of the table's B-tree. Keyed user first, a batch of
1,000 events from 500 users dirtied a page per user, and every dirty page is written to the WAL
at commit: the rows written per batch stayed the same while the pages written grew with the
table (measured: 4.3 -> 2.2 MB of WAL per 1,000 events once 20,000 were stored). A user's rows
are found from their events (``FeedbackStore.delete_user``), which the events' user index
answers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PK_NAME = "pk_feedback_current"
COLUMNS = "user_pk, reply_pk, other_key, kind, event_pk, created_at, updated_at"
REPLY_FIRST = ("reply_pk", "user_pk", "other_key", "kind")
USER_FIRST = ("user_pk", "reply_pk", "other_key", "kind")


def _rebuild_sqlite(key: tuple[str, ...]) -> None:
    # SQLite cannot change a primary key in place: copy into a new WITHOUT ROWID table.
    op.create_table(
        "feedback_current_new",
        sa.Column("user_pk", sa.BigInteger(), nullable=False),
        sa.Column("reply_pk", sa.BigInteger(), nullable=False),
        sa.Column("other_key", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event_pk", BIG_ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*key, name=PK_NAME),
        sqlite_with_rowid=False,
    )
    op.execute(
        f"INSERT INTO feedback_current_new ({COLUMNS}) SELECT {COLUMNS} FROM feedback_current"
    )
    op.drop_table("feedback_current")
    op.rename_table("feedback_current_new", "feedback_current")


def _rekey(key: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(key)
    else:
        op.drop_constraint(PK_NAME, "feedback_current", type_="primary")
        op.create_primary_key(PK_NAME, "feedback_current", list(key))


def upgrade() -> None:
    _rekey(REPLY_FIRST)


def downgrade() -> None:
    _rekey(USER_FIRST)
