"""Errors of the feedback store. Each carries the HTTP status the service answers with and the
field it is about, so the library, the CLI and the API report the same problem the same way."""

from __future__ import annotations

from rlhf_persona.errors import UserError


class StoreError(UserError):
    """A request the store cannot fulfil; ``field`` names the offending input when there is one."""

    status_code = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.detail = message
        self.field = field


class InvalidInput(StoreError):
    status_code = 422


class NotFound(StoreError):
    status_code = 404


class Conflict(StoreError):
    status_code = 409


class Gone(StoreError):
    """The user was deleted: their id stays blocked (tombstone)."""

    status_code = 410
