"""Alembic environment of the feedback store.

Run programmatically by ``rlhf_persona.feedback.migrate`` with an open connection in
``config.attributes["connection"]`` (already inside a write transaction), or by the ``alembic``
command line with ``-x url=...``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from rlhf_persona.feedback.tables import metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several processes may open a fresh database at once: one migrates, the rest wait.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(724310142)")
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from rlhf_persona.feedback.db import make_engine, resolve_url

    url = context.get_x_argument(as_dictionary=True).get("url")
    engine = make_engine(resolve_url(url))
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
