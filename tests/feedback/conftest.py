"""Fixtures of the feedback-store tests: a real PostgreSQL server for the session, a fresh
database (SQLite file or PostgreSQL) per test, and API keys."""

from __future__ import annotations

import os

import pytest
from feedback_helpers import HASH_KEY

from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.feedback.testing import PostgresServer

os.environ.setdefault("RLHF_PERSONA_QUIET_DEV_KEY", "1")


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL (Debian package binaries, run as nobody). Missing binaries are an
    error, not a skip: CI installs them (scripts/setup.sh)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("pg_server").create_database()


@pytest.fixture
def store(db_url):
    with FeedbackStore(db_url, hash_key=HASH_KEY) as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path):
    with FeedbackStore(tmp_path / "feedback.db", hash_key=HASH_KEY) as s:
        yield s
