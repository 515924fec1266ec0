"""The chat page: static HTML + JS + CSS from ``rlhf_persona/serving/web/`` (no build step).

``GET /chat?token=...`` serves the page; the script keeps the token in sessionStorage, removes it
from the address bar and talks to ``/v1/chat/*`` with it. Strict headers: no referrer (the token
never leaks to other sites), a same-origin content security policy, no framing, no caching.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

router = APIRouter(include_in_schema=False)
FILES = {"chat.js": "text/javascript", "chat.css": "text/css"}
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("rlhf_persona.serving").joinpath("web", name).read_bytes()


@router.get("/chat")
def chat_page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/chat/{name}")
def chat_asset(name: str) -> Response:
    if name not in FILES:
        return Response(b"not found", 404, media_type="text/plain")
    return Response(_read(name), media_type=FILES[name] + "; charset=utf-8", headers=HEADERS)
