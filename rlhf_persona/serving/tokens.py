"""Short-lived per-user tokens for the chat page: ``v1.<payload>.<signature>``.

The payload (base64url) holds the user id and the expiry time; the signature is HMAC-SHA256
under the chat token key. The page sends the token as ``Authorization: Bearer ...``, so the
browser never holds an API key, and a token only acts as its own user. The key is
``RLHF_PERSONA_CHAT_TOKEN_SECRET`` if set, else derived from the store's hash key, so the
``chat-link`` command and the service agree without extra setup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from rlhf_persona.feedback.privacy import resolve_hash_key

VERSION = "v1"
#: Longest lifetime of a token: a token claiming a later expiry is refused even when its
#: signature is valid (a leaked key or a careless mint cannot make a years-long credential).
MAX_TTL_S = 7 * 24 * 3600


class TokenError(ValueError):
    """A token that is malformed, forged or expired (answered 401)."""


@dataclass(frozen=True)
class UserToken:
    user_id: str
    expires_at: int  # unix seconds


def token_key(secret: str | None = None, hash_key: str | None = None) -> bytes:
    """The signing key: ``secret`` if given, else derived from the hash key (a separate key,
    so a token signature never equals a stored hash)."""
    if secret:
        return secret.encode()
    return hmac.new(resolve_hash_key(hash_key), b"chat-token-key", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, f"{VERSION}.{payload}".encode(), hashlib.sha256).digest())


def mint_token(key: bytes, user_id: str, ttl_s: int, now: float | None = None) -> str:
    """A token for ``user_id``, valid for ``ttl_s`` seconds (at most ``MAX_TTL_S``)."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be between 1 and {MAX_TTL_S} seconds, not {ttl_s}")
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = _b64(f"{user_id}\n{expires}".encode())
    return f"{VERSION}.{payload}.{_sign(key, payload)}"


def verify_token(key: bytes, token: str, now: float | None = None) -> UserToken:
    """The user and expiry of a valid token; ``TokenError`` saying why otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION or len(token) > 1024:
        raise TokenError("malformed chat token")
    _, payload, signature = parts
    if not hmac.compare_digest(_sign(key, payload), signature):
        raise TokenError("invalid chat token")
    try:
        user_id, expires = _unb64(payload).decode().split("\n")
        expires_at = int(expires)
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed chat token") from None
    now = now if now is not None else time.time()
    if expires_at < now:
        raise TokenError("chat token expired: ask for a new link")
    if expires_at > now + MAX_TTL_S + 60:  # a minute of clock skew between minting hosts
        raise TokenError("chat token lives longer than the maximum lifetime: ask for a new link")
    return UserToken(user_id, expires_at)
