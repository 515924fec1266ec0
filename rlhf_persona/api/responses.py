"""Fast JSON responses (orjson) and the error body shape shared by every error."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSON(Response):
    """JSON via orjson; routes return it directly, skipping FastAPI's jsonable_encoder."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_body(message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """``{"detail": message, "field": field, ...}``: every 4xx/5xx body has this shape."""
    body: dict[str, Any] = {"detail": message}
    if field:
        body["field"] = field
    body.update(extra)
    return body
