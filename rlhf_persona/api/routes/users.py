"""/v1/users: create, update the profile (collector), read, list (reader), delete (admin).

A key that may not read (collector) gets back only what it sent: the profile keys of its
request, not the rest of a stored profile."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from rlhf_persona.api.deps import GRANTS, admin, collector, get_store, reader
from rlhf_persona.api.responses import JSON
from rlhf_persona.api.schemas import ERRORS, DeletedOut, UserOut, UserPage
from rlhf_persona.feedback.schemas import ID_PATTERN, UserIn, UserPatch
from rlhf_persona.feedback.store import FeedbackStore

router = APIRouter(prefix="/users", tags=["users"], responses=ERRORS)
UserId = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]
Store = Annotated[FeedbackStore, Depends(get_store)]


Role = Annotated[str, Depends(collector)]


def _visible(user: dict, role: str, sent: dict | None) -> dict:
    """The user as this key may see it: all of it with the reader role, else what was sent."""
    if "reader" in GRANTS[role]:
        return user
    profile = {key: value for key, value in user["profile"].items() if key in (sent or {})}
    return {**user, "profile": profile, "meta": {}}


@router.post("", response_model=UserOut, status_code=201)
async def create_user(body: UserIn, store: Store, role: Role) -> JSON:
    """Create a user (201), or update an existing one's profile / consent (200).

    Without ``user_id`` the id is derived from ``external_id`` (keyed hash) or generated.
    """
    user = await run_in_threadpool(
        store.put_user, body.user_id, body.profile, body.external_id, body.consent
    )
    out = await run_in_threadpool(store.get_user, user["user_id"])
    return JSON(_visible(out, role, body.profile), 201 if user["created"] else 200)


@router.get("", response_model=UserPage, dependencies=[Depends(reader)])
def list_users(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JSON:
    """Users, oldest first, ``limit`` per page; follow ``next_cursor``."""
    items, next_cursor = store.list_users(limit, cursor)
    return JSON({"items": items, "next_cursor": next_cursor})


@router.get("/{user_id}", response_model=UserOut, dependencies=[Depends(reader)])
def get_user(user_id: UserId, store: Store) -> JSON:
    return JSON(store.get_user(user_id))


@router.patch("/{user_id}", response_model=UserOut)
def update_user(user_id: UserId, body: UserPatch, store: Store, role: Role) -> JSON:
    """Merge ``profile`` into the stored profile (a null value removes a key); set consent."""
    user = store.update_profile(user_id, body.profile, consent=body.consent)
    return JSON(_visible(user, role, body.profile))


@router.delete("/{user_id}", response_model=DeletedOut, dependencies=[Depends(admin)])
def delete_user(user_id: UserId, store: Store) -> JSON:
    """Delete the user's profile and feedback; a tombstone keeps them out of re-imports."""
    removed = store.delete_user(user_id)
    return JSON({"user_id": user_id, "deleted": True, "removed": removed})
