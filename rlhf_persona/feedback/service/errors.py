"""Exception handlers: every error is JSON ``{"detail": ..., "field": ...}`` with a 4xx status
that says what the client can fix. A 500 is a bug; the catch-all still answers JSON."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from rlhf_persona.feedback.errors import StoreError
from rlhf_persona.feedback.schemas import describe_errors
from rlhf_persona.feedback.service.responses import JSON, error_body

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


async def _database_busy(request: Request, exc: sa.exc.OperationalError) -> JSON:
    log.warning("database unavailable: %s", exc)
    return JSON(error_body("the database is busy or unavailable; retry"), 503,
                headers={"Retry-After": "1"})  # fmt: skip


async def _unexpected(request: Request, exc: Exception) -> JSON:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSON(error_body("internal server error"), 500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(sa.exc.OperationalError, _database_busy)
    app.add_exception_handler(Exception, _unexpected)
