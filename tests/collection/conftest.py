"""Fixtures of the live-collection tests: a real uvicorn service with the chat policy
(``embedded:tiny-test``) on a real SQLite file, API keys and two users."""

from __future__ import annotations

import pytest
from collection_helpers import CHAT_ENV, HASH_KEY, make_db, persona_registry, warm_up

from rlhf_persona.api.testing import ServiceProcess
from rlhf_persona.feedback.store import FeedbackStore


@pytest.fixture(scope="session")
def chat_service(tmp_path_factory, tiny_test_path):
    """The service with chat, serving ``ann`` (segment 1) with a persona and ``bob`` (no
    segment) with the base model; every turn is an A/B turn unless the request says otherwise."""
    tmp = tmp_path_factory.mktemp("chat")
    db = tmp / "feedback.db"
    url, keys = make_db(db, {"ann": {"age_band": "25-34"}, "bob": {"age_band": "45-54"}})
    with FeedbackStore(db, hash_key=HASH_KEY) as store:
        store.write_segments("seg-run-1", [("ann", 1, 0.9)])
    env = {**CHAT_ENV, "RLHF_PERSONA_CHAT_AB_SHARE": "1"}
    args = ["--policy-registry", str(persona_registry(tmp / "registry"))]
    with ServiceProcess(url, env=env, args=args) as proc:
        proc.keys, proc.db = keys, db
        warm_up(proc)
        yield proc
    assert "Traceback" not in proc.log(), proc.log()
