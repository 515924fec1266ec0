"""A throwaway feedback service for tests and benchmarks: ``ServiceProcess`` starts the
``serve`` command (``python -m rlhf_persona.api``) on a free loopback port and waits until
``/healthz`` answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rlhf_persona.feedback.testing import free_port


class ServiceProcess:
    """``rlhf-persona serve`` in a subprocess (a real uvicorn) on a free loopback port. ``serve``
    refuses to start without a real ``RLHF_PERSONA_HASH_KEY``: pass one in ``env``, or
    ``args=["--dev"]`` for a throwaway store."""

    def __init__(self, db_url: str, *, env: dict[str, str] | None = None, args: list[str] = ()):
        self.db_url = db_url
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="rlhf-serve-", suffix=".log")[1])

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        cmd = [sys.executable, "-m", "rlhf_persona.api", "--db", self.db_url,
               "--host", "127.0.0.1", "--port", str(self.port), *self.args]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"service did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
