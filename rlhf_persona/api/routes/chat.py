"""/v1/chat: replies from the policy serving each user, per-user chat tokens, and feedback from
the chat page on the replies a user was shown.

Auth: ``POST /v1/chat`` takes an API key (role collector; ``user_id`` in the body) or a chat
token (``Authorization: Bearer``; the token's user). ``/v1/chat/session`` and
``/v1/chat/feedback`` take only a token, so the page works without any API key, and a token's
user may rate only replies that were shown to them (403 otherwise). Tokens are minted by
``POST /v1/chat/tokens`` (collector) or ``rlhf-persona chat-link USER``.

Generation runs in the micro-batcher's worker thread (see ``chat/batcher.py``); the event loop
only awaits it, so feedback posts are answered while replies are generated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from rlhf_persona.api.chat_schemas import (
    ChatFeedbackIn,
    ChatIn,
    ChatOut,
    SessionOut,
    TokenIn,
    TokenOut,
)
from rlhf_persona.api.chat_state import ChatState
from rlhf_persona.api.deps import api_key_header, check_role, collector, get_store
from rlhf_persona.api.responses import JSON
from rlhf_persona.api.routes.feedback import record_one
from rlhf_persona.api.schemas import ERRORS, EventResultOut
from rlhf_persona.feedback.errors import Gone, NotFound, StoreError
from rlhf_persona.feedback.privacy import mask_pii
from rlhf_persona.feedback.schemas import FeedbackEventIn
from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.serving.policy import REASON_TAGS
from rlhf_persona.serving.settings import ChatSettings
from rlhf_persona.serving.tokens import TokenError, mint_token, verify_token

log = logging.getLogger("rlhf_persona.chat")
bearer = HTTPBearer(auto_error=False, description="Per-user chat token (from /v1/chat/tokens).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
Store = Annotated[FeedbackStore, Depends(get_store)]
CHAT_ERRORS = ERRORS | {
    429: {"model": ERRORS[422]["model"], "description": "A rate limit: see Retry-After."},
    503: {"model": ERRORS[422]["model"], "description": "The chat policy is not available."},
}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's own lifespan (the store is open): builds ``app.state.chat``."""
    settings = getattr(app.state, "chat_settings", None) or ChatSettings()
    cache = os.environ.get("RLHF_PERSONA_CACHE")
    state = ChatState(
        settings, app.state.store, app.state.settings.hash_key, Path(cache) if cache else None
    )
    await state.start()
    app.state.chat = state
    try:
        yield
    finally:
        await state.stop()


router = APIRouter(prefix="/chat", tags=["chat"], responses=CHAT_ERRORS, lifespan=lifespan)


def _chat(request: Request) -> ChatState:
    return request.app.state.chat


class Forbidden(StoreError):
    """Answered 403 with the field it is about."""

    status_code = 403


_BEARER = {"WWW-Authenticate": "Bearer"}


async def _token_user(request: Request, creds: HTTPAuthorizationCredentials | None) -> Any:
    """The token's user; 401 for a missing, forged or expired token, or one whose user was
    deleted since it was minted (checked on every request, not cached)."""
    if creds is None or creds.scheme.lower() != "bearer":
        message = "missing chat token: send Authorization: Bearer <token>"
        raise HTTPException(401, message, headers=_BEARER)
    try:
        user = verify_token(_chat(request).key, creds.credentials)
    except TokenError as exc:
        raise HTTPException(401, str(exc), headers=_BEARER) from None
    try:
        await _chat(request).segment_of(user.user_id, fresh=True)
    except (Gone, NotFound):
        raise HTTPException(
            401, "the chat token's user no longer exists", headers=_BEARER
        ) from None
    return user


def _same_user(token_user: str, body_user: str | None) -> None:
    if body_user is not None and body_user != token_user:
        raise Forbidden("the chat token is for another user", "user_id")


def _iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()


@router.post("", response_model=ChatOut, responses={401: ERRORS[401]})
async def chat(
    body: ChatIn,
    request: Request,
    creds: Credentials,
    key: Annotated[str | None, Depends(api_key_header)] = None,
) -> JSON:
    """Answer a message with one reply, or two (``ab``) for an A/B choice, from the policy of
    the user's current segment. Each reply is stored with what produced it (policy label,
    adapter, segment, generation settings) and recorded as shown to the user."""
    state = _chat(request)
    if creds is not None:
        user_id = (await _token_user(request, creds)).user_id
        _same_user(user_id, body.user_id)
    else:
        await check_role(request, "collector", key)
        if body.user_id is None:
            raise StoreError("required with an API key (or send a chat token)", "user_id")
        user_id = body.user_id
    if len(body.message) > state.settings.max_message_chars:
        raise StoreError(f"at most {state.settings.max_message_chars} characters", "message")
    with state.limiter.admit(user_id if creds is not None else None):
        return await _answer(state, body, user_id)


async def _answer(state: ChatState, body: ChatIn, user_id: str) -> JSON:
    """Generate, store and answer (inside the limiter's slot)."""
    message = mask_pii(body.message)  # neither the policy nor the store sees contact details
    segment = await state.segment_of(user_id)
    ab = state.wants_ab(body.ab)
    try:
        generated = await state.replies(segment, message, ab, user_id)
    except Exception as exc:  # the model failed to load or to generate
        log.warning("chat generation failed: %s", exc)
        detail = f"the chat policy is not available: {exc}"
        raise HTTPException(503, detail, headers={"Retry-After": "5"}) from None
    rows = [
        dict(prompt=message, reply=g.text, policy=g.policy, adapter=g.adapter,
             segment=g.segment, generation=g.generation, user_id=user_id,
             conversation_id=body.conversation_id)
        for g in generated
    ]  # fmt: skip
    stored = await state.record_replies(rows)
    ab = len(stored) == 2
    return JSON(
        {
            "user_id": user_id,
            "conversation_id": body.conversation_id,
            "prompt": message,
            "ab": ab,
            "replies": [
                {"reply_id": r["reply_id"], "text": r["reply"], "slot": "AB"[i] if ab else None}
                for i, r in enumerate(stored)
            ],
            "policy": generated[0].policy,
            "segment": segment,
            "generation": generated[0].generation,
        }
    )


@router.post("/tokens", response_model=TokenOut, status_code=201, dependencies=[Depends(collector)])
async def create_token(body: TokenIn, request: Request, store: Store) -> JSON:
    """A short-lived chat token for a user, and the chat page's path with it."""
    state = _chat(request)
    await run_in_threadpool(store.get_user, body.user_id)  # 404 / 410 for unknown / deleted
    ttl = body.ttl_s or state.settings.token_ttl_s
    token = mint_token(state.key, body.user_id, ttl)
    expires = verify_token(state.key, token).expires_at
    return JSON(
        {"user_id": body.user_id, "token": token, "expires_at": _iso(expires),
         "url": f"/chat?token={token}"},
        201,
    )  # fmt: skip


@router.get("/session", response_model=SessionOut, responses={401: ERRORS[401]})
async def session(request: Request, creds: Credentials) -> JSON:
    """Who the token is for, until when, and what the page offers (reason tags)."""
    user = await _token_user(request, creds)
    state = _chat(request)
    return JSON(
        {"user_id": user.user_id, "expires_at": _iso(user.expires_at),
         "ab_share": state.settings.ab_share,
         "max_message_chars": state.settings.max_message_chars,
         "reason_tags": REASON_TAGS}
    )  # fmt: skip


@router.post(
    "/feedback",
    response_model=EventResultOut,
    status_code=201,
    responses={200: {"model": EventResultOut, "description": "Duplicate: stored before."},
               401: ERRORS[401], 403: {"model": ERRORS[403]["model"],
               "description": "The reply was not shown to this user."}},
)  # fmt: skip
async def chat_feedback(body: ChatFeedbackIn, request: Request, creds: Credentials) -> JSON:
    """Record the token's user's thumb, rating, A/B choice or comment on replies shown to them:
    201 ``created`` / ``updated`` (a changed vote), 200 ``duplicate`` (a retry)."""
    user_id = (await _token_user(request, creds)).user_id
    _same_user(user_id, body.user_id)
    state = _chat(request)
    for field in ("reply_id", "other_reply_id"):
        rid = getattr(body, field)
        if rid is not None and not await state.shown.was_shown(user_id, rid):
            raise Forbidden("this reply was not shown to you", field)
    try:
        event = FeedbackEventIn(**body.model_dump(exclude={"user_id"}), user_id=user_id)
    except ValidationError as exc:  # cross-field rules (e.g. a rating without a value)
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return await record_one(request, event)
