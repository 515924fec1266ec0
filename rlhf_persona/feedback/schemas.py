"""Validated shapes of what enters the store: users, replies and feedback events.

The same models validate the dicts of the library API (simulator, importers) and the JSON bodies
of the HTTP API, so every entry point rejects the same things with the same field names. Limits
are explicit (lengths, ranges, finite numbers, no NUL or lone surrogates) so that nothing a client
sends can make the database fail later.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

KINDS = ("thumbs", "rating", "pairwise", "comment")
Kind = Literal["thumbs", "rating", "pairwise", "comment"]
ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
MAX_PROFILE_KEYS = 100
MAX_PROFILE_TEXT = 1_000  # characters of one text value in a profile (features, not documents)
MAX_PROFILE_BYTES = 16 * 1024  # the whole profile as JSON, after a PATCH merged into it too
MAX_JSON_DEPTH = 4


def prompt_hash(prompt: str) -> str:
    """SHA-256 of a prompt: replies with the same prompt hash answer the same prompt."""
    return hashlib.sha256(prompt.encode()).hexdigest()


def reply_id_for(prompt: str, reply: str, hashed_prompt: str | None = None) -> str:
    """Content-derived reply id: the same prompt and text always give the same id, anywhere."""
    digest = hashlib.sha256(f"{hashed_prompt or prompt_hash(prompt)}\x00{reply}".encode())
    return "r_" + digest.hexdigest()[:24]


def _clean_text(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


def _clean_json(value: Any, depth: int = 0) -> Any:
    """Check a JSON value can be stored by every backend: finite numbers, clean text, depth."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise ValueError("integers must be within +-2**53")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        return value
    if isinstance(value, list):
        return [_clean_json(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {_clean_text(str(k)): _clean_json(v, depth + 1) for k, v in value.items()}
    raise ValueError(f"unsupported JSON value of type {type(value).__name__}")


def _clean_profile(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_PROFILE_KEYS:
        raise ValueError(f"at most {MAX_PROFILE_KEYS} keys")
    value = _clean_json(value)
    for key, item in value.items():
        if _longest_text(item) > MAX_PROFILE_TEXT:
            raise ValueError(f"{key}: text values are limited to {MAX_PROFILE_TEXT} characters")
    size = len(orjson.dumps(value))
    if size > MAX_PROFILE_BYTES:
        raise ValueError(f"{size} bytes as JSON; a profile is limited to {MAX_PROFILE_BYTES}")
    return value


def _longest_text(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return max(map(_longest_text, value), default=0)
    return 0


def _utc(value: datetime) -> datetime:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("created_at: out of range") from None
    if not 1970 <= value.year <= 9000:
        raise ValueError("created_at: must be between the years 1970 and 9000")
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
Ident = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
Profile = Annotated[dict[Annotated[str, Field(max_length=64)], Any], AfterValidator(_clean_profile)]
JsonDict = Annotated[dict[str, Any], AfterValidator(_clean_json)]
Tag = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_clean_text)]
SegmentId = Annotated[int, Field(ge=-1, le=2**31 - 1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=100_000)


class FeedbackEventIn(_Model):
    """One piece of feedback. Give the rated reply as ``prompt`` + ``reply`` texts (the store
    creates or finds the reply by content) or as ``reply_id`` of a reply recorded earlier; the
    same for the other reply of a pairwise choice.

    ``value``: thumbs +1 up, -1 down, 0 cleared (a retracted vote or a Polis "pass");
    rating 1..5; pairwise +1 = ``reply`` chosen over ``other_reply``, -1 = the other chosen;
    comment: none (the text is ``comment``).
    """

    event_id: Ident = Field(description="Client-chosen id: sending the same id again is a no-op.")
    user_id: Ident
    kind: Kind
    prompt: Text | None = Field(None, max_length=20_000)
    reply: Text | None = Field(None, max_length=50_000)
    reply_id: Ident | None = None
    other_reply: Text | None = Field(None, max_length=50_000)
    other_reply_id: Ident | None = None
    value: int | None = Field(None, ge=-1, le=5, strict=True)
    reason_tags: list[Tag] = Field(default_factory=list, max_length=20)
    comment: Text | None = Field(None, max_length=5_000)
    created_at: datetime | None = Field(None, description="When the user gave it (default: now).")
    policy: Annotated[str, Field(max_length=200), AfterValidator(_clean_text)] | None = Field(
        None, description="What produced ``reply`` (only used when the reply is new)."
    )
    segment: SegmentId | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> FeedbackEventIn:
        # Each rule raises with the field name first, so errors read "reply_id: ...".
        if self.reply_id is None and (self.reply is None or self.prompt is None):
            raise ValueError("reply: give reply_id, or prompt and reply texts")
        if self.reply is not None and self.prompt is None:
            raise ValueError("prompt: needed with the reply text")
        if self.other_reply is not None and self.prompt is None:
            raise ValueError("prompt: needed with other_reply (the pair shares its prompt)")
        # Both an id and the texts may be given (e.g. rows read back from a store) if they agree.
        pairs = [(self.reply, self.reply_id, "reply_id")]
        pairs.append((self.other_reply, self.other_reply_id, "other_reply_id"))
        for text, rid, name in pairs:
            if text is not None and rid is not None and reply_id_for(self.prompt, text) != rid:
                raise ValueError(f"{name}: does not match the prompt and reply texts given")
        has_other = self.other_reply is not None or self.other_reply_id is not None
        if self.kind == "pairwise":
            if not has_other:
                raise ValueError("other_reply: a pairwise event needs the other reply")
            if self.value not in (-1, 1):
                raise ValueError("value: pairwise needs +1 (reply chosen) or -1 (other chosen)")
        elif has_other:
            raise ValueError(f"other_reply: only pairwise events have one, not {self.kind}")
        if self.kind == "thumbs" and self.value not in (-1, 0, 1):
            raise ValueError("value: thumbs needs +1 (up), -1 (down) or 0 (cleared)")
        if self.kind == "rating" and (self.value is None or not 1 <= self.value <= 5):
            raise ValueError("value: a rating is an integer from 1 to 5")
        if self.kind == "comment":
            if self.value is not None:
                raise ValueError("value: a comment event has no value")
            if not self.comment:
                raise ValueError("comment: a comment event needs the comment text")
        if self.created_at is not None:
            self.created_at = _utc(self.created_at)
        return self


class UserIn(_Model):
    """Create (or update) a user. Without ``user_id`` one is derived from ``external_id`` (keyed
    hash) or generated."""

    user_id: Ident | None = None
    external_id: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        None, description="Your own id for the user; stored only as a keyed hash."
    )
    profile: Profile | None = None
    consent: StrictBool | None = Field(None, description="May the feedback be used for training?")


class UserPatch(_Model):
    """Merge into the profile (a null value removes the key) and/or change consent."""

    profile: Profile | None = None
    consent: StrictBool | None = None


class ReplyIn(_Model):
    """A reply shown to users: its prompt, text and what produced it."""

    prompt: Text = Field(max_length=20_000)
    reply: Text = Field(max_length=50_000)
    policy: Annotated[str, Field(max_length=200), AfterValidator(_clean_text)] | None = None
    adapter: Annotated[str, Field(max_length=200), AfterValidator(_clean_text)] | None = None
    segment: SegmentId | None = None
    generation: JsonDict | None = Field(None, description="Generation settings (temperature...).")
    user_id: Ident | None = Field(None, description="The user it was shown to, if any.")
    conversation_id: Ident | None = None


_RULE = re.compile(r"^([a-z_]+): (.*)$", re.S)
_LOC_PREFIXES = ("body", "query", "path", "header")


def describe_errors(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Pydantic / FastAPI errors as ``{"field", "message", "type"}`` with the field named as
    the client wrote it (``events.3.value``). Cross-field rules of the models say which field
    they are about at the start of their message (``"reply: ..."``)."""
    out = []
    for err in errors:
        parts = [str(p) for p in err.get("loc", ())]
        if parts and parts[0] in _LOC_PREFIXES:
            parts = parts[1:]
        kind = str(err.get("type", "invalid"))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if kind == "json_invalid":  # the loc is a character position, not a field
            parts = []
            error = (err.get("ctx") or {}).get("error")
            message = f"not valid JSON: {error}" if error else "not valid JSON"
        field = ".".join(parts)
        rule = _RULE.match(message) if kind == "value_error" else None
        if rule and not field.endswith(rule.group(1)):
            field = f"{field}.{rule.group(1)}" if field else rule.group(1)
            message = rule.group(2)
        out.append({"field": field or "body", "message": message, "type": kind})
    return out


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of the first problem of a validation error."""
    first = describe_errors(exc.errors(include_url=False))[0]
    return first["field"], first["message"]
