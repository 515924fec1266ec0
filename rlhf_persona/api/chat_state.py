"""What the chat routes share while the service runs: the policy, its micro-batcher, the token
key, and small caches (users' segments, replies shown to each user).

Created by the chat router's lifespan (``routes/chat.py``) as ``app.state.chat``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from rlhf_persona.feedback.errors import StoreError
from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.serving.batcher import MicroBatcher
from rlhf_persona.serving.limits import ChatLimiter
from rlhf_persona.serving.policy import ChatPolicy, Generated, Request
from rlhf_persona.serving.settings import ChatSettings
from rlhf_persona.serving.tokens import token_key
from rlhf_persona.serving.worker import ProcessPolicy

log = logging.getLogger("rlhf_persona.chat")
MAX_CACHED_USERS = 50_000


class ShownReplies:
    """Which replies each user was shown: a bounded in-memory cache in front of the store's
    ``reply_views`` (a miss asks the database; only positive answers are cached)."""

    def __init__(self, store: FeedbackStore, max_users: int = MAX_CACHED_USERS) -> None:
        self.store = store
        self.max_users = max_users
        self._seen: OrderedDict[str, set[str]] = OrderedDict()

    def add(self, user_id: str, reply_ids: list[str]) -> None:
        self._seen.setdefault(user_id, set()).update(reply_ids)
        self._seen.move_to_end(user_id)
        while len(self._seen) > self.max_users:
            self._seen.popitem(last=False)

    async def was_shown(self, user_id: str, reply_id: str) -> bool:
        if reply_id in self._seen.get(user_id, ()):
            return True
        if await run_in_threadpool(self.store.was_shown, user_id, reply_id):
            self.add(user_id, [reply_id])
            return True
        return False


class ChatState:
    """The chat's runtime: see the module docstring."""

    def __init__(
        self,
        settings: ChatSettings,
        store: FeedbackStore,
        hash_key: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        policy_class = ProcessPolicy if settings.separate_process else ChatPolicy
        self.policy: ChatPolicy | ProcessPolicy = policy_class(settings, cache_dir)
        self.batcher: MicroBatcher[Request, Generated] = MicroBatcher(
            self.policy.generate,
            settings.max_batch,
            settings.batch_window_ms / 1000,
            "generate",
            key=lambda request: request.user_id,  # round-robin across users
        )
        # Replies are written by one thread, batched: concurrent chats never race each other
        # for the database's write lock, and take it once per batch.
        self.recorder: MicroBatcher[dict, Any] = MicroBatcher(
            self._record, max_batch=64, window_s=0, name="replies"
        )
        self.limiter = ChatLimiter(settings.max_inflight, settings.token_max_inflight,
                                   settings.token_rate_per_min, settings.token_burst)  # fmt: skip
        self.key = token_key(settings.token_secret, hash_key)
        self.shown = ShownReplies(store)
        self.rng = random.Random(settings.seed)
        self._segments: dict[str, tuple[int | None, float]] = {}
        self._preload: asyncio.Task | None = None

    async def start(self) -> None:
        self.batcher.start()
        self.recorder.start()
        if self.settings.preload:  # in the background: the API answers while the model loads
            self._preload = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            await self.batcher.run_in_worker(self.policy.load)
        except Exception:  # chat requests will report it; feedback keeps working
            log.exception("loading the chat policy failed")

    async def stop(self) -> None:
        if self._preload is not None and not self._preload.done():
            self._preload.cancel()
        await self.batcher.stop()
        await self.recorder.stop()
        if isinstance(self.policy, ProcessPolicy):
            self.policy.close()

    async def segment_of(self, user_id: str, fresh: bool = False) -> int | None:
        """The user's current segment (cached ``segment_cache_s`` unless ``fresh``); raises
        NotFound / Gone for an unknown or deleted user."""
        hit = self._segments.get(user_id)
        now = time.monotonic()
        if hit is not None and hit[1] > now and not fresh:
            return hit[0]
        user = await run_in_threadpool(self.store.get_user, user_id)
        if len(self._segments) > MAX_CACHED_USERS:
            self._segments.clear()
        self._segments[user_id] = (user["segment"], now + self.settings.segment_cache_s)
        return user["segment"]

    def _record(self, rows: list[dict]) -> list[dict | StoreError]:
        """Store the replies (and who they were shown to) of every chat queued meanwhile in one
        transaction: a single short write lock per batch keeps feedback writes fast. If a row
        is refused, the rows are stored one by one so that the error stays with its row."""
        try:
            return list(self.store.put_replies(rows))
        except StoreError:
            pass
        out: list[dict | StoreError] = []
        for row in rows:
            try:
                out.append(self.store.put_reply(row))
            except StoreError as exc:
                out.append(exc)
        return out

    async def record_replies(self, rows: list[dict]) -> list[dict]:
        """Store the replies shown to a user; raises the first row's error (e.g. 409)."""
        stored = await self.recorder.submit_many(rows)
        for item in stored:
            if isinstance(item, StoreError):
                raise item
        self.shown.add(rows[0]["user_id"], [r["reply_id"] for r in stored])
        return stored

    def wants_ab(self, forced: bool | None) -> bool:
        if forced is not None:
            return forced
        return self.rng.random() < self.settings.ab_share

    async def replies(
        self, segment: int | None, prompt: str, ab: bool, user_id: str | None = None
    ) -> list[Generated]:
        """One reply, or two different ones for an A/B turn (one retry when both came out the
        same; a single reply if they still do). ``user_id``: for a user-level best-of-n reward."""
        request = Request(segment, prompt, user_id)
        out = await self.batcher.submit_many([request] * (2 if ab else 1))
        if ab and out[0].text == out[1].text:
            out[1] = await self.batcher.submit(request)
            if out[0].text == out[1].text:
                out = out[:1]
        return out
