"""Generation in a child process, so that it never holds the service's GIL.

A tiny policy's ``generate`` is mostly Python (a loop over small torch ops), so a generation
thread in the service process holds the GIL much of the time, and every other thread (the event
loop, the feedback writer) waits for it after each database call. In a child process the model
has its own interpreter and the service process only waits on a pipe; a crash of the model
(e.g. out of memory) does not take the API down either. Measured with
``scripts/bench_collection.py`` (embedded:tiny, 32 chat users, busy 2-core machine): 3.6 vs 2.9
replies/s and feedback p99 53 vs 58 ms for child process vs thread. (Storing each batch's
replies in one transaction mattered more: it brought the feedback p99 measured inside the
service from about 240 ms to about 80 ms.)

``ProcessPolicy`` has the interface of ``ChatPolicy`` (``load``, ``generate``), which runs in the
child (one process: batches are generated one at a time, as before). The child exits when the
service dies, even by SIGKILL (it watches its parent), and a crashed child is replaced on the
next batch.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from rlhf_persona.serving.policy import ChatPolicy, Generated, Request, check_settings
from rlhf_persona.serving.settings import ChatSettings

log = logging.getLogger("rlhf_persona.chat")
_POLICY: ChatPolicy | None = None  # the child's policy


def exit_with_parent(parent: int, interval_s: float = 0.5) -> None:
    """Exit this process (at once, without cleanup) when ``parent`` is no longer its parent:
    a thread polls ``getppid``, which also works where ``PR_SET_PDEATHSIG`` is unavailable."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:  # re-parented: the parent is gone
                os._exit(0)
            time.sleep(interval_s)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init_child(settings: dict[str, Any], cache_dir: str | None, parent: int) -> None:
    global _POLICY
    exit_with_parent(parent)
    _POLICY = ChatPolicy(ChatSettings(**settings), Path(cache_dir) if cache_dir else None)


def _child_load() -> float:
    assert _POLICY is not None
    return _POLICY.load().load_s or 0.0


def _child_generate(requests: list[Request]) -> list[Generated]:
    assert _POLICY is not None
    return _POLICY.generate(requests)


class ProcessPolicy:
    """``ChatPolicy`` run in one child process; ``load`` and ``generate`` block the calling
    thread (the micro-batcher's worker) until the child answers."""

    def __init__(self, settings: ChatSettings, cache_dir: Path | None = None) -> None:
        check_settings(settings)
        self.settings = settings
        self.cache_dir = cache_dir
        self.load_s: float | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                args = (self.settings.model_dump(), self.cache_dir and str(self.cache_dir),
                        os.getpid())  # fmt: skip
                self._pool = ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_child, initargs=args,
                )  # fmt: skip
            return self._pool

    def _call(self, fn: Any, *args: Any) -> Any:
        pool = self._executor()
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:  # the child died (e.g. out of memory): a new one next time
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise RuntimeError(
                "the generation process died; it restarts on the next request"
            ) from None

    def load(self) -> ProcessPolicy:
        self.load_s = self._call(_child_load)
        log.info("chat policy loaded in the generation process in %.1fs", self.load_s)
        return self

    def generate(self, requests: list[Request]) -> list[Generated]:
        return self._call(_child_generate, requests)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def child_pids(self) -> list[int]:
        pool = self._pool
        return list(getattr(pool, "_processes", None) or {}) if pool else []
