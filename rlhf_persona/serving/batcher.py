"""An async micro-batcher: requests that arrive together share one call of a batch function.

Each ``submit`` puts an item on a queue and awaits its result. One consumer task takes the first
queued item, waits up to ``window_s`` for more to join (at most ``max_batch``), then runs
``fn(items)`` in a single worker thread, so the event loop stays free (feedback posts are
answered while replies are generated). Items that arrive during a call queue up and form the
next batch: under load batches grow by themselves, and there is never more than one call
running (the model is used by one thread).

With a ``key`` (the chat's: the user), a batch takes the waiting items round-robin across keys,
so a user with many requests queued cannot hold back another user's single one for several
batches (first come, first served within a key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("rlhf_persona.chat.batcher")


class MicroBatcher(Generic[T, R]):
    """Batches concurrent ``submit(item)`` calls into ``fn(list_of_items) -> list_of_results``.

    Args:
        fn: the batch function; returns one result per item, in order. Runs in a worker thread.
        max_batch: most items per call.
        window_s: how long the first item of a batch waits for others.
        name: the worker thread's name.
        key: groups items for round-robin batches (None: first come, first served).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        max_batch: int = 32,
        window_s: float = 0.005,
        name: str = "batcher",
        key: Callable[[T], Hashable] | None = None,
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.window_s = window_s
        self.key = key
        self._waiting: OrderedDict[Hashable, deque[tuple[T, asyncio.Future]]] = OrderedDict()
        self._size = 0  # items in _waiting
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._queue: asyncio.Queue[tuple[T, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # calls of fn so far
        self.items = 0  # items answered so far

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._consume())

    async def stop(self) -> None:
        """Stop taking batches; pending submitters get a ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drain()
        for _, future in self._take(self._size):
            if not future.done():
                future.set_exception(RuntimeError("the service is shutting down"))
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the batcher's worker thread (e.g. loading the model first)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def submit(self, item: T) -> R:
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Submit several items (they may land in different batches); results in order."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _consume(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._size:
                self._hold(await self._queue.get())
            deadline = loop.time() + self.window_s
            while True:
                self._drain()
                remaining = deadline - loop.time()
                if self._size >= self.max_batch or remaining <= 0:
                    break
                try:
                    self._hold(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            await self._run(self._take(self.max_batch))

    def _hold(self, entry: tuple[T, asyncio.Future]) -> None:
        key = self.key(entry[0]) if self.key is not None else None
        self._waiting.setdefault(key, deque()).append(entry)
        self._size += 1

    def _drain(self) -> None:
        """Move what is queued to the waiting items (so that a batch sees every key)."""
        while self._queue is not None and not self._queue.empty():
            self._hold(self._queue.get_nowait())

    def _take(self, n: int) -> list[tuple[T, asyncio.Future]]:
        """Up to ``n`` waiting items, one key at a time in turn."""
        out = []
        while self._waiting and len(out) < n:
            key, items = next(iter(self._waiting.items()))
            out.append(items.popleft())
            if items:
                self._waiting.move_to_end(key)
            else:
                del self._waiting[key]
        self._size -= len(out)
        return out

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.done()]  # skip cancelled clients
        if not live:
            return
        try:
            results = await self.run_in_worker(self.fn, [item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(live)}")
        except Exception as exc:  # every waiter of the batch gets the error
            log.exception("batch of %d failed", len(live))
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.items += len(live)
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
