"""Helpers shared by the feedback tests."""

from __future__ import annotations

HASH_KEY = "feedback-test-hash-key"


def event(event_id: str, user_id: str = "alice", kind: str = "thumbs", value=1, **extra):
    """A feedback event dict in the contract's shape (prompt + reply texts by default)."""
    ev = {"event_id": event_id, "user_id": user_id, "kind": kind, "value": value,
          "prompt": "What is a good breakfast?", "reply": "Oatmeal with fruit."}  # fmt: skip
    ev.update(extra)
    return ev
