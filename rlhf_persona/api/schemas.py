"""Response shapes of the HTTP API (request shapes are in ``rlhf_persona.feedback.schemas``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class UserOut(BaseModel):
    user_id: str
    profile: dict[str, Any]
    meta: dict[str, Any] = Field({}, description="Side data that is not a feature (e.g. labels).")
    consent: bool
    created_at: str | None = None
    updated_at: str | None = None
    segment: int | None = Field(None, description="Current segment, if assigned.")


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class ReplyOut(BaseModel):
    reply_id: str
    prompt: str
    reply: str
    policy: str | None = None
    adapter: str | None = None
    segment: int | None = None
    generation: dict[str, Any] | None = None
    created_at: str | None = None


class EventResultOut(BaseModel):
    event_id: str | None
    status: Literal["created", "duplicate", "updated", "error"]
    message: str | None = None
    field: str | None = None
    code: int | None = Field(None, description="HTTP status of an error (404, 409, 410, 422).")
    reply_id: str | None = None
    other_reply_id: str | None = None


class BatchOut(BaseModel):
    results: list[EventResultOut]
    counts: dict[str, int]


class EventOut(BaseModel):
    event_id: str
    user_id: str
    kind: str
    prompt: str
    reply: str
    reply_id: str
    other_reply: str | None = None
    other_reply_id: str | None = None
    value: int | None = None
    reason_tags: list[str] = []
    comment: str | None = None
    created_at: str


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = None


class DeletedOut(BaseModel):
    user_id: str
    deleted: bool = True
    removed: dict[str, int]


class ErrorOut(BaseModel):
    detail: str
    field: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "Missing or invalid X-API-Key.",
        403: "The key's role may not do this.",
        404: "Unknown id.",
        410: "The user was deleted.",
        413: "Request body too large.",
        422: "Invalid input; `field` names it.",
    }.items()
}
