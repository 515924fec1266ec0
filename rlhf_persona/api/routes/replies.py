"""/v1/replies: record a reply shown to users (and what produced it); read one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool

from rlhf_persona.api.deps import collector, get_store, reader
from rlhf_persona.api.responses import JSON
from rlhf_persona.api.schemas import ERRORS, ReplyOut
from rlhf_persona.feedback.schemas import ID_PATTERN, ReplyIn
from rlhf_persona.feedback.store import FeedbackStore

router = APIRouter(prefix="/replies", tags=["replies"], responses=ERRORS)
Store = Annotated[FeedbackStore, Depends(get_store)]


@router.post("", response_model=ReplyOut, status_code=201, dependencies=[Depends(collector)])
async def record_reply(body: ReplyIn, store: Store) -> JSON:
    """Record a reply (201; 200 when the same prompt + text was recorded before). The
    ``reply_id`` is derived from the content, so feedback can name it."""
    reply = await run_in_threadpool(store.put_reply, body.model_dump())
    created = reply.pop("created")
    return JSON(reply, 201 if created else 200)


@router.get("/{reply_id}", response_model=ReplyOut, dependencies=[Depends(reader)])
def get_reply(
    reply_id: Annotated[str, Path(max_length=128, pattern=ID_PATTERN)], store: Store
) -> JSON:
    return JSON(store.get_reply(reply_id))
