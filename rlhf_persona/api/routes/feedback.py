"""/v1/feedback: post one event, post a batch, list current values (or the history).

Writes go through the app's ``BatchingWriter`` (group commit), so concurrent single posts share
transactions. The single-event route is kept lean: an async handler, an async key check, the
body validated once by FastAPI, and the response serialised by orjson. A batch is parsed on
the writer's thread (see ``writer.py``).
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool

from rlhf_persona.api.deps import check_role, get_store, reader
from rlhf_persona.api.responses import JSON, error_body
from rlhf_persona.api.schemas import ERRORS, BatchOut, EventPage, EventResultOut
from rlhf_persona.feedback.schemas import ID_PATTERN, FeedbackEventIn
from rlhf_persona.feedback.store import FeedbackStore

router = APIRouter(prefix="/feedback", tags=["feedback"], responses=ERRORS)
Store = Annotated[FeedbackStore, Depends(get_store)]
SUCCESS_STATUS = {"created": 201, "updated": 201, "duplicate": 200}


async def record_one(request: Request, event: FeedbackEventIn) -> JSON:
    """Commit one validated event through the writer and answer as ``POST /feedback`` does
    (the chat page's feedback answers the same way)."""
    [result] = await request.app.state.writer.submit([event])
    if result.status == "error":
        return JSON(error_body(result.message, result.field, event_id=result.event_id),
                    result.code or 422)  # fmt: skip
    return JSON(result.to_dict(), SUCCESS_STATUS[result.status])


class _Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[FeedbackEventIn]


_BATCH_SCHEMA = {
    "type": "object",
    "required": ["events"],
    "additionalProperties": False,
    "properties": {
        "events": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/FeedbackEventIn"},
            "description": "Events; each is answered on its own (an invalid one does not "
            "reject the others).",
        }
    },
}


_EVENT_BODY = {"required": True, "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/FeedbackEventIn"}}}}  # fmt: skip
_KEY = [{"APIKeyHeader": []}]


async def _collector(request: Request) -> None:
    # The hot routes check the key inline: FastAPI's dependency resolution cost more per
    # request than the rest of a single post together.
    await check_role(request, "collector", request.headers.get("x-api-key"))


@router.post(
    "",
    response_model=EventResultOut,
    status_code=201,
    responses={200: {"model": EventResultOut, "description": "Duplicate: stored before."},
               409: ERRORS[422] | {"description": "Event id reused for another event."}},
    openapi_extra={"requestBody": _EVENT_BODY, "security": _KEY},
)  # fmt: skip
async def post_feedback(request: Request) -> JSON:
    """Record one event: 201 ``created`` / ``updated`` (changed vote), 200 ``duplicate`` (the
    same event id was stored before: nothing changes), or 404/409/410/422 naming the field."""
    await _collector(request)
    try:
        event = FeedbackEventIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return await record_one(request, event)


@router.post(
    "/batch",
    response_model=BatchOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _BATCH_SCHEMA}},
        },
        "security": _KEY,
    },
)
async def post_batch(request: Request) -> JSON:
    """Record many events in one request: one result per event, in order, each with its own
    status (``created``/``updated``/``duplicate``/``error`` with message and field)."""
    await _collector(request)
    body, limit = await request.body(), request.app.state.settings.max_batch_events
    try:  # parsed on the writer's thread (see writer.py)
        results = await request.app.state.writer.submit(lambda: parse_batch(body, limit))
    except InvalidBatch as exc:
        return JSON(error_body(f"{exc.field}: {exc.message}", exc.field), 422)
    counts = Counter(result.status for result in results)
    return JSON({"results": results, "counts": dict(counts)})  # orjson writes the dataclasses


class InvalidBatch(Exception):
    """The batch as a whole is malformed (``field`` names what), not one of its events."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def parse_batch(body: bytes, max_events: int) -> list[Any]:
    """Valid batches are parsed and validated in one pass (pydantic's JSON parser); otherwise
    the envelope is checked here and each event is validated, and answered, on its own."""
    try:
        events: list[Any] = _Batch.model_validate_json(body).events
    except ValidationError:
        events = _envelope(body)
    if len(events) > max_events:
        raise InvalidBatch("events", f"at most {max_events} events per batch, got {len(events)}")
    return events


def _envelope(body: bytes) -> list[Any]:
    """The events of a batch with invalid events, as dicts; the envelope must be right."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidBatch("body", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise InvalidBatch("events", 'expected an object {"events": [...]} with a list')
    if extra := sorted(set(data) - {"events"}):
        raise InvalidBatch(extra[0], "unexpected field")
    return data["events"]


@router.get("", response_model=EventPage, dependencies=[Depends(reader)])
async def list_feedback(
    store: Store,
    kind: Literal["thumbs", "rating", "pairwise", "comment"] | None = None,
    user_id: Annotated[str | None, Query(max_length=128, pattern=ID_PATTERN)] = None,
    history: Annotated[bool, Query(description="Every event, not only current values.")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JSON:
    """Current feedback values (or with ``history`` every event), oldest first, paginated."""
    items, next_cursor = await run_in_threadpool(
        store.list_events, kind, user_id, limit=limit, cursor=cursor, history=history
    )
    return JSON({"items": items, "next_cursor": next_cursor})
