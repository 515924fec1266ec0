"""Group commit: one writer thread per process turns concurrent feedback posts into batches.

Each request puts its events on a queue and awaits a future; the writer thread takes whatever
is queued (up to ``max_events``), writes it with one ``record_events`` call (one transaction,
bulk inserts), then answers every request. Under load many posts share one commit, so single
posts get the batch path's throughput, and the event loop never blocks on the database. A
request is answered only after its transaction committed, so an acknowledged event is stored.

A request may hand over a function that parses its body instead of the events: the writer
thread calls it before it takes the database's write lock. Validating a 1,000-event batch holds
the GIL for milliseconds in one call (pydantic-core); on the event loop's thread that stalled
this thread's write in progress, and with it every process waiting for the lock.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhf_persona.feedback.ingest import EventResult
from rlhf_persona.feedback.store import FeedbackStore

log = logging.getLogger("rlhf_persona.service.writer")
_STOP = object()


Events = Sequence[Any] | Callable[[], Sequence[Any]]


@dataclass
class _Job:
    events: Events
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away; the events are stored all the same
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BatchingWriter:
    """Serialises writes through one thread and commits concurrent requests together."""

    def __init__(self, store: FeedbackStore, max_events: int = 2000) -> None:
        self.store = store
        self.max_events = max_events
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self.batches = 0  # commits so far (for tests and metrics)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    async def submit(self, events: Events) -> list[EventResult]:
        """Write ``events`` (validated models or dicts, or a function returning them that runs
        on the writer thread); returns one result per event. What the function raises is
        raised here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(events, loop, future))
        return await future

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is _STOP:
                break
            jobs, size = [], 0
            while True:  # this job and whatever else is queued, up to max_events
                if self._parsed(job):
                    jobs.append(job)
                    size += len(job.events)
                if size >= self.max_events:
                    break
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
            if jobs:
                self._write(jobs)

    @staticmethod
    def _parsed(job: _Job) -> bool:
        """Parse a job handed over as a function; False (and the request answered with the
        exception) when that fails."""
        if not callable(job.events):
            return True
        try:
            job.events = job.events()
        except Exception as exc:  # e.g. an invalid batch, answered as 422 by the route
            job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
            return False
        return True

    def _write(self, jobs: list[_Job]) -> None:
        events = [event for job in jobs for event in job.events]
        try:
            results, error = self.store.record_events(events), None
        except Exception as exc:  # answered as a 5xx by the route's error handlers
            log.exception("writing %d events failed", len(events))
            results, error = [], exc
        self.batches += 1
        start = 0
        for job in jobs:
            part = results[start : start + len(job.events)]
            start += len(job.events)
            job.loop.call_soon_threadsafe(_resolve, job.future, part, error)
