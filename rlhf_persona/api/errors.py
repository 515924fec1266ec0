"""Exception handlers: every error is JSON ``{"detail": ..., "field": ...}`` with a 4xx status
that says what the client can fix. A 500 is a bug; the catch-all still answers JSON."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from rlhf_persona.api.responses import JSON, error_body
from rlhf_persona.feedback.errors import StoreError
from rlhf_persona.feedback.schemas import describe_errors
from rlhf_persona.serving.limits import RateLimited

log = logging.getLogger("rlhf_persona.service")


async def _validation(request: Request, exc: RequestValidationError) -> JSON:
    errors = describe_errors(list(exc.errors()))
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return JSON(
        error_body(f"{first['field']}: {first['message']}", first["field"], errors=errors), 422
    )


async def _store_error(request: Request, exc: StoreError) -> JSON:
    return JSON(error_body(exc.detail, exc.field), exc.status_code)


async def _http(request: Request, exc: HTTPException) -> JSON:
    return JSON(error_body(str(exc.detail)), exc.status_code, headers=exc.headers)


async def _database(request: Request, exc: sa.exc.SQLAlchemyError) -> JSON:
    """A database error is never a 500: a constraint the database enforced is a conflict, a
    value it cannot hold is invalid input, anything else (locked, unreachable, pool timeout)
    is a 503 the client may retry."""
    if isinstance(exc, sa.exc.IntegrityError):
        return JSON(error_body("conflicts with stored data (rejected by the database)"), 409)
    if isinstance(exc, sa.exc.DataError):
        return JSON(error_body("a value is out of range for the database"), 422)
    log.warning("database unavailable: %s", exc)
    return JSON(error_body("the database is busy or unavailable; retry"), 503,
                headers={"Retry-After": "1"})  # fmt: skip


async def _rate_limited(request: Request, exc: RateLimited) -> JSON:
    return JSON(error_body(str(exc)), 429, headers={"Retry-After": str(exc.retry_after_s)})


async def _overflow(request: Request, exc: OverflowError) -> JSON:
    # sqlite3 raises it (not a DBAPI error) for an integer beyond 64 bits
    log.warning("overflow on %s %s: %s", request.method, request.url.path, exc)
    return JSON(error_body("a number is out of range"), 422)


async def _unexpected(request: Request, exc: Exception) -> JSON:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSON(error_body("internal server error"), 500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(sa.exc.SQLAlchemyError, _database)
    app.add_exception_handler(OverflowError, _overflow)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(Exception, _unexpected)
