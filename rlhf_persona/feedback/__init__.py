"""Feedback store: users, replies, feedback events and segment assignments in SQLite or
PostgreSQL; import, export to TRL datasets, privacy. Storage only: the HTTP API is
``rlhf_persona.api``, chat generation ``rlhf_persona.serving`` (both build on this package, never
the other way round; ``tests/feedback/test_feedback_layers.py`` checks it).

    store = FeedbackStore("feedback.db")            # or a postgresql:// URL; migrates on open
    store.upsert_user("u1", {"age_band": "25-34"})
    store.record_events([{"event_id": "e1", "user_id": "u1", "kind": "thumbs",
                          "prompt": "Hi", "reply": "Hello!", "value": 1}])
    dataset, report = export_preference(store)
"""

from rlhf_persona.feedback.errors import Conflict, Gone, InvalidInput, NotFound, StoreError
from rlhf_persona.feedback.export import export_kto, export_preference, export_ratings
from rlhf_persona.feedback.ingest import EventResult
from rlhf_persona.feedback.schemas import FeedbackEventIn, reply_id_for
from rlhf_persona.feedback.store import FeedbackStore

__all__ = [
    "Conflict",
    "EventResult",
    "FeedbackEventIn",
    "FeedbackStore",
    "Gone",
    "InvalidInput",
    "NotFound",
    "StoreError",
    "export_kto",
    "export_preference",
    "export_ratings",
    "reply_id_for",
]
