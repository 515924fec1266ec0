"""Helpers shared by the live-collection tests (fixtures are in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from rlhf_persona.api.testing import ServiceProcess
from rlhf_persona.feedback.store import FeedbackStore

os.environ.setdefault("RLHF_PERSONA_QUIET_DEV_KEY", "1")
HASH_KEY = "collection-test-key"
CHAT_ENV = {
    "RLHF_PERSONA_HASH_KEY": HASH_KEY,
    "RLHF_PERSONA_CHAT_POLICY": "embedded:tiny-test",
    "RLHF_PERSONA_CHAT_MAX_NEW_TOKENS": "20",
    "RLHF_PERSONA_CHAT_PRELOAD": "1",
    "OMP_NUM_THREADS": "1",  # the tests share two cores with the test process and the browser
}


def make_db(path: Path, users: dict[str, dict] | None = None) -> tuple[str, dict[str, str]]:
    """A migrated SQLite store with API keys (collector, admin) and ``users``."""
    with FeedbackStore(path, hash_key=HASH_KEY) as store:
        keys = {role: store.create_api_key(role) for role in ("collector", "admin")}
        for user_id, profile in (users or {}).items():
            store.upsert_user(user_id, profile)
    return f"sqlite:///{path}", keys


PERSONA = "You are a formal assistant. Answer in complete, polite sentences."


def persona_registry(root: Path) -> Path:
    """A policy registry of the ``prompt`` strategy (no training needed): segment 1 is served
    with a persona system prompt, everyone else by the plain base model."""
    from rlhf_persona.policy import AdapterRegistry, Route

    registry = AdapterRegistry(root, "embedded:tiny-test", strategy="prompt")
    registry.set_route(1, Route(None, PERSONA))
    registry.set_route("global", Route(None))
    registry.save()
    return root


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (the service's generation process)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


def warm_up(proc: ServiceProcess, user_id: str = "bob") -> None:
    """Wait for the policy to load (in the background since start): one chat, generous
    timeout, so the tests' own requests measure the service and not the model load."""
    resp = httpx.post(f"{proc.base_url}/v1/chat", timeout=300,
                      json={"user_id": user_id, "message": "hello", "ab": False},
                      headers={"X-API-Key": proc.keys["collector"]})  # fmt: skip
    assert resp.status_code == 200, resp.text
