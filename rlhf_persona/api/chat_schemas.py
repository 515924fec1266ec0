"""Request and response shapes of the chat routes (``routes/chat.py``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from rlhf_persona.feedback.schemas import Ident, Tag, Text
from rlhf_persona.serving.tokens import MAX_TTL_S


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatIn(_In):
    """A user's message. With a chat token the user comes from the token (``user_id`` may be
    left out); with an API key ``user_id`` is required."""

    user_id: Ident | None = None
    message: Text = Field(min_length=1, max_length=20_000)
    conversation_id: Ident | None = Field(None, description="Groups the turns of one chat.")
    ab: StrictBool | None = Field(
        None, description="true: two replies (A/B choice); false: one; null: the service's share."
    )

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class ChatReplyOut(BaseModel):
    reply_id: str
    text: str
    slot: Literal["A", "B"] | None = Field(None, description="A or B on an A/B turn.")


class ChatOut(BaseModel):
    user_id: str
    conversation_id: str | None
    prompt: str
    ab: bool
    replies: list[ChatReplyOut]
    policy: str = Field(description="Label of the policy that answered (adapter, +persona).")
    segment: int | None
    generation: dict[str, Any]


class TokenIn(_In):
    user_id: Ident
    ttl_s: StrictInt | None = Field(
        None, ge=10, le=MAX_TTL_S, description="Lifetime in seconds (default: the service's)."
    )


class TokenOut(BaseModel):
    user_id: str
    token: str
    expires_at: str
    url: str = Field(description="Path of the chat page with the token (append to the host).")


class SessionOut(BaseModel):
    user_id: str
    expires_at: str
    ab_share: float
    max_message_chars: int
    reason_tags: list[str]


class ChatFeedbackIn(_In):
    """Feedback from the chat page on replies shown to the token's user: ``reply_id`` (and
    ``other_reply_id`` for an A/B choice) as the chat returned them. Values as in
    ``FeedbackEventIn``: thumbs +1/-1/0 (cleared), rating 1..5, pairwise +1 = ``reply_id``
    chosen over ``other_reply_id``, -1 the other way."""

    event_id: Ident = Field(description="Client-chosen id: a retry with the same id is a no-op.")
    user_id: Ident | None = None
    kind: Literal["thumbs", "rating", "pairwise", "comment"]
    reply_id: Ident
    other_reply_id: Ident | None = None
    value: int | None = Field(None, ge=-1, le=5, strict=True)
    reason_tags: list[Tag] = Field(default_factory=list, max_length=20)
    comment: Text | None = Field(None, max_length=5_000)
