"""Route modules of the HTTP API, one per resource. ``ROUTERS`` lists what ``create_app``
mounts under ``/v1``; a new module (e.g. chat) adds its router there or is passed to
``create_app(routers=[...])``."""

from __future__ import annotations

from rlhf_persona.api.routes import (
    admin,
    chat,
    docs,
    feedback,
    pages,
    replies,
    users,
)

ROUTERS = [users.router, replies.router, feedback.router, admin.router, chat.router]
PAGES = [pages.router, docs.router]  # HTML pages (chat, API docs), outside the API prefix
