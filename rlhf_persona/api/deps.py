"""Dependencies shared by the route modules: the store, the writer and API-key roles.

A route that needs a role declares ``Depends(require("collector"))`` (write: post users,
replies, feedback, chats), ``Depends(require("reader"))`` (read profiles, feedback, replies) or
``Depends(require("admin"))`` (delete, export, and everything the others may). Writing and
reading are separate: a collector key (e.g. in a chat backend) cannot read what others sent,
a reader key (e.g. a dashboard) cannot write. Keys travel in the
``X-API-Key`` header, are created with ``rlhf-persona keys create --role ...`` and are stored
hashed; valid keys are cached in memory for ``api_key_cache_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rlhf_persona.api.settings import ServiceSettings
from rlhf_persona.api.writer import BatchingWriter
from rlhf_persona.feedback.store import FeedbackStore

GRANTS = {"collector": {"collector"}, "reader": {"reader"},
          "admin": {"collector", "reader", "admin"}}  # fmt: skip
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (role collector, reader or admin)."
)


class ApiKeys:
    """Looks up API-key roles in the store, caching valid keys for a short while."""

    def __init__(self, store: FeedbackStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[str, float]] = {}

    async def role(self, key: str) -> str | None:
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        role = await run_in_threadpool(self.store.api_key_role, key)
        if role is not None and self.ttl > 0:
            self._cache[key] = (role, now + self.ttl)
        return role


def get_store(request: Request) -> FeedbackStore:
    return request.app.state.store


def get_writer(request: Request) -> BatchingWriter:
    return request.app.state.writer


def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def check_role(request: Request, role: str, key: str | None) -> str:
    """The role of the request's API key; 401 without a valid key, 403 if it lacks ``role``."""
    if not key:
        raise HTTPException(401, "missing API key: send it in the X-API-Key header")
    found = await request.app.state.api_keys.role(key) if len(key) <= 256 else None
    if found is None:
        raise HTTPException(401, "invalid or revoked API key (X-API-Key)")
    if role not in GRANTS.get(found, ()):
        raise HTTPException(403, f"this needs the {role} role (or admin); the API key has {found}")
    return found


def require(role: str) -> Callable[..., Awaitable[str]]:
    """A dependency that checks the request's API key has ``role`` (or a higher one)."""

    async def check(request: Request, key: str | None = Depends(api_key_header)) -> str:
        return await check_role(request, role, key)

    return check


collector = require("collector")
reader = require("reader")
admin = require("admin")
