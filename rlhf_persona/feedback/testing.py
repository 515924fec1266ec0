"""A throwaway PostgreSQL server for tests and benchmarks (the service's counterpart is
``rlhf_persona.api.testing.ServiceProcess``).

``PostgresServer`` runs ``initdb`` + ``pg_ctl`` from the Debian package
(``/usr/lib/postgresql/*/bin``) in a temporary folder, on a free loopback port, as a non-root
user (PostgreSQL refuses to run as root), and removes everything on ``stop()``. Set
``RLHF_PERSONA_TEST_POSTGRES_URL`` to use an existing server instead (databases are then
created on it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
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
