"""API keys of the HTTP service: created with a role, stored only as a hash, revoked by prefix.
Functions of a ``StoreSession``."""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from rlhf_persona.feedback.errors import InvalidInput
from rlhf_persona.feedback.privacy import hash_api_key
from rlhf_persona.feedback.session import StoreSession
from rlhf_persona.feedback.tables import api_clients, utcnow

ROLES = ("collector", "reader", "admin")


def create_api_key(db: StoreSession, role: str, name: str | None = None) -> str:
    """Create an API key with ``role`` (collector: write, reader: read, admin: all); the key
    is returned once and stored only as a hash."""
    if role not in ROLES:
        raise InvalidInput(f"must be one of {', '.join(ROLES)}, not {role!r}", "role")
    key = "rp_" + secrets.token_urlsafe(32)
    with db.transaction() as conn:
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


def api_key_role(db: StoreSession, key: str) -> str | None:
    """The role of a valid, unrevoked key, else None."""
    query = sa.select(api_clients.c.role).where(
        api_clients.c.key_hash == hash_api_key(key), api_clients.c.revoked_at.is_(None)
    )
    with db.engine.connect() as conn:
        return conn.execute(query).scalar()


def list_api_keys(db: StoreSession) -> list[dict[str, Any]]:
    query = sa.select(
        api_clients.c.name, api_clients.c.key_prefix, api_clients.c.role,
        api_clients.c.created_at, api_clients.c.revoked_at,
    ).order_by(api_clients.c.id)  # fmt: skip
    with db.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def revoke_api_key(db: StoreSession, prefix: str) -> int:
    """Revoke the keys starting with ``prefix`` (the first 10 characters are stored)."""
    with db.transaction() as conn:
        return conn.execute(
            api_clients.update()
            .where(api_clients.c.key_prefix == prefix[:10], api_clients.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        ).rowcount
