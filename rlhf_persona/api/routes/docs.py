"""The API documentation pages (``/docs``: Swagger UI, ``/redoc``) with a strict content
security policy.

FastAPI's pages load their scripts from a CDN. The policy allows exactly those script and
stylesheet URLs and the page's own inline script (by its SHA-256), and the page may only fetch
from this service: a compromised or look-alike host cannot run script on the service's origin,
and the page cannot send anything elsewhere. The policy is derived from the HTML FastAPI
renders, so it follows FastAPI's own choice of URLs.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse

router = APIRouter(include_in_schema=False)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_SCRIPT_SRC = re.compile(r'<script src="([^"]+)"')
_LINK_HREF = re.compile(r'<link[^>]*href="([^"]+)"')


def csp_for(html: str) -> str:
    """A content security policy that allows what ``html`` loads and nothing else."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]
    scripts = sorted({_source(url) for url in _SCRIPT_SRC.findall(html)})
    links = sorted({_source(url) for url in _LINK_HREF.findall(html)})
    styles = [url for url in links if not url.endswith((".png", ".ico", ".svg"))]
    icons = [url for url in links if url not in styles]
    fonts = ["https://fonts.gstatic.com"] if any("fonts.googleapis" in u for u in styles) else []
    return "; ".join([
        "default-src 'none'",
        "script-src " + " ".join([*scripts, *hashes]),
        # The UIs set element styles at run time; styles cannot run script.
        "style-src 'unsafe-inline' " + " ".join(styles),
        "img-src 'self' data: " + " ".join(icons),
        "font-src 'self' " + " ".join(fonts),
        "connect-src 'self'",
        "worker-src blob:",  # ReDoc parses the spec in a web worker
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])  # fmt: skip


def _source(url: str) -> str:
    # A CSP source is matched without the query (and may not contain one).
    return url.split("?", 1)[0].split("#", 1)[0]


@cache
def _page(kind: str, openapi_url: str, title: str) -> tuple[bytes, str]:
    render = get_swagger_ui_html if kind == "swagger" else get_redoc_html
    html = render(openapi_url=openapi_url, title=title).body.decode()
    return html.encode(), csp_for(html)


def _respond(request: Request, kind: str) -> HTMLResponse:
    app = request.app
    body, policy = _page(kind, app.openapi_url, f"{app.title} - {kind}")
    headers = {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}  # fmt: skip
    return HTMLResponse(body, headers=headers)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return _respond(request, "swagger")


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return _respond(request, "redoc")
