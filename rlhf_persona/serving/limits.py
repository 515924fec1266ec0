"""Admission control of ``POST /v1/chat``: per-token limits and a global one, answered 429 with
``Retry-After``.

Generation is the service's scarce resource: one process, one batch at a time. Without limits
one chat token (a browser tab, a script with a leaked link) sending requests in parallel filled
the generation queue and pushed other users' replies from under a second to 5-7 s. So:

- **per token** (i.e. per user of a chat token): at most ``token_max_inflight`` requests at
  once, and a token bucket of ``token_burst`` requests refilled at ``token_rate_per_min``;
- **global**: at most ``max_inflight`` chat requests at once (API-key callers, typically a
  backend speaking for many users, count here only);

and the micro-batcher serves queued requests round-robin across users (``batcher.py``).
State is per worker process and in memory (the limits bound one process's queue).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MAX_TRACKED = 50_000  # idle, full buckets are forgotten past this many users


class RateLimited(Exception):
    """Answered 429 with ``Retry-After: retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, math.ceil(retry_after_s))


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    inflight: int = 0


class ChatLimiter:
    """Admits or refuses chat requests; use ``with limiter.admit(user_or_None): ...``.

    Called on the event loop's thread only (no lock needed)."""

    def __init__(
        self,
        max_inflight: int,
        token_max_inflight: int,
        token_rate_per_min: float,
        token_burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_inflight = max_inflight
        self.token_max_inflight = token_max_inflight
        self.rate_per_s = token_rate_per_min / 60
        self.burst = token_burst
        self.clock = clock
        self.inflight = 0
        self._buckets: dict[str, _Bucket] = {}

    @contextmanager
    def admit(self, token_user: str | None) -> Iterator[None]:
        """Hold a slot for one request (of a chat token's user, or None for an API key);
        raises ``RateLimited`` when a limit is reached."""
        if self.inflight >= self.max_inflight:
            raise RateLimited("the chat is busy: too many requests in progress; retry", 2)
        bucket = self._take(token_user) if token_user is not None else None
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            if bucket is not None:
                bucket.inflight -= 1

    def _take(self, user: str) -> _Bucket:
        now = self.clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[user] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate_per_s)
        bucket.stamp = now
        if bucket.inflight >= self.token_max_inflight:
            raise RateLimited(
                f"at most {self.token_max_inflight} chat requests at once per chat token; "
                "wait for the replies", 1)  # fmt: skip
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / self.rate_per_s if self.rate_per_s else 60
            raise RateLimited(f"too many chat requests for this chat token: at most "
                              f"{self.rate_per_s * 60:g} per minute", wait)  # fmt: skip
        bucket.tokens -= 1
        bucket.inflight += 1
        return bucket

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) < MAX_TRACKED:
            return
        full = self.burst - 1e-9
        for user, b in list(self._buckets.items()):
            refilled = b.tokens + (now - b.stamp) * self.rate_per_s
            if b.inflight == 0 and refilled >= full:
                del self._buckets[user]
