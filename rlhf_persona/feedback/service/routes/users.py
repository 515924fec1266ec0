"""/v1/users: create, read, update the profile, list, delete (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from starlette.concurrency import run_in_threadpool

from rlhf_persona.feedback.schemas import ID_PATTERN, UserIn, UserPatch
from rlhf_persona.feedback.service.deps import admin, collector, get_store
from rlhf_persona.feedback.service.models import ERRORS, DeletedOut, UserOut, UserPage
from rlhf_persona.feedback.service.responses import JSON
from rlhf_persona.feedback.store import FeedbackStore

router = APIRouter(prefix="/users", tags=["users"], responses=ERRORS)
UserId = Annotated[str, Path(min_length=1, max_length=128, pattern=ID_PATTERN)]
Store = Annotated[FeedbackStore, Depends(get_store)]


@router.post("", response_model=UserOut, status_code=201, dependencies=[Depends(collector)])
async def create_user(body: UserIn, store: Store) -> JSON:
    """Create a user (201), or update an existing one's profile / consent (200).

    Without ``user_id`` the id is derived from ``external_id`` (keyed hash) or generated.
    """
    user = await run_in_threadpool(
        store.put_user, body.user_id, body.profile, body.external_id, body.consent
    )
    out = await run_in_threadpool(store.get_user, user["user_id"])
    return JSON(out, 201 if user["created"] else 200)


@router.get("", response_model=UserPage, dependencies=[Depends(collector)])
def list_users(
    store: Store,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JSON:
    """Users, oldest first, ``limit`` per page; follow ``next_cursor``."""
    items, next_cursor = store.list_users(limit, cursor)
    return JSON({"items": items, "next_cursor": next_cursor})


@router.get("/{user_id}", response_model=UserOut, dependencies=[Depends(collector)])
def get_user(user_id: UserId, store: Store) -> JSON:
    return JSON(store.get_user(user_id))


@router.patch("/{user_id}", response_model=UserOut, dependencies=[Depends(collector)])
def update_user(user_id: UserId, body: UserPatch, store: Store) -> JSON:
    """Merge ``profile`` into the stored profile (a null value removes a key); set consent."""
    return JSON(store.update_profile(user_id, body.profile, consent=body.consent))


@router.delete("/{user_id}", response_model=DeletedOut, dependencies=[Depends(admin)])
def delete_user(user_id: UserId, store: Store) -> JSON:
    """Delete the user's profile and feedback; a tombstone keeps them out of re-imports."""
    removed = store.delete_user(user_id)
    return JSON({"user_id": user_id, "deleted": True, "removed": removed})
