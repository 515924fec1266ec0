"""Throwaway servers for tests and benchmarks: a real PostgreSQL and a real uvicorn service.

``PostgresServer`` runs ``initdb`` + ``pg_ctl`` from the Debian package
(``/usr/lib/postgresql/*/bin``) in a temporary folder, on a free loopback port, as a non-root
user (PostgreSQL refuses to run as root), and removes everything on ``stop()``. Set
``RLHF_PERSONA_TEST_POSTGRES_URL`` to use an existing server instead (databases are then
created on it).

``ServiceProcess`` starts the ``serve`` command (``python -m rlhf_persona.api``)
on a free loopback port and waits until ``/healthz`` answers.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

EXTERNAL_PG_ENV = "RLHF_PERSONA_TEST_POSTGRES_URL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_available() -> bool:
    return bool(os.environ.get(EXTERNAL_PG_ENV)) or find_pg_bin() is not None


class PostgresServer:
    """A PostgreSQL server for the lifetime of this object (use as a context manager)."""

    def __init__(self, run_as: str = "nobody") -> None:
        self.external = os.environ.get(EXTERNAL_PG_ENV)
        self.run_as = run_as if os.geteuid() == 0 else None
        self.port = free_port()
        self.tmp: Path | None = None
        self.bin = None if self.external else find_pg_bin()
        if not self.external and self.bin is None:
            raise RuntimeError("no PostgreSQL binaries (apt-get install postgresql)")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        if self.external:
            return self
        self.tmp = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))
        data = self.tmp / "data"
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
        self._pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync", "--locale=C")  # fmt: skip
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.tmp} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.tmp / "log"), "-w",
                 "-t", "60", "start")  # fmt: skip
        return self

    def stop(self) -> None:
        if self.external or self.tmp is None:
            return
        try:
            self._pg("pg_ctl", "-D", str(self.tmp / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        kwargs = {"user": self.run_as} if self.run_as else {}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", **kwargs)
        if proc.returncode != 0:
            log = (self.tmp / "log").read_text() if self.tmp and (self.tmp / "log").exists() else ""
            raise RuntimeError(f"{tool} failed: {proc.stderr or proc.stdout}\n{log}")

    # -- databases ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """URL of the maintenance database ``postgres``."""
        if self.external:
            return self.external
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import sqlalchemy as sa

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return sa.engine.make_url(self.url).set(database=name).render_as_string(False)


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
