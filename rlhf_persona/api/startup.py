"""What ``serve`` checks before it listens, and what its worker processes do when they start.

- **Secrets.** The service refuses to start with the public development hash key (anyone could
  recompute pseudonyms and mint chat tokens for any user) unless ``--dev`` is given, and
  ``--dev`` only on a loopback interface.
- **The port.** A port that is taken is reported up front, naming what commonly holds it (an
  earlier ``serve`` or its workers), instead of uvicorn's bare ``[Errno 98]``.
- **Workers die with their supervisor.** ``serve --workers N`` runs N processes under uvicorn's
  supervisor; if the supervisor is killed (SIGKILL, OOM killer) its workers would keep the
  port. Each worker watches its parent and exits once it is re-parented.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

from rlhf_persona.errors import UserError
from rlhf_persona.feedback.privacy import DEV_HASH_KEY, HASH_KEY_ENV
from rlhf_persona.serving.worker import exit_with_parent

MIN_SECRET_CHARS = 16
DEV_ENV = "RLHF_PERSONA_DEV"
TOKEN_SECRET_ENV = "RLHF_PERSONA_CHAT_TOKEN_SECRET"
SUPERVISOR_ENV = "RLHF_PERSONA_SUPERVISOR_PID"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_problems(hash_key: str | None, token_secret: str | None) -> list[str]:
    """What is wrong with the configured secrets (empty: fine for production)."""
    problems = []
    if not hash_key:
        problems.append(f"{HASH_KEY_ENV} is not set")
    elif hash_key == DEV_HASH_KEY:
        problems.append(f"{HASH_KEY_ENV} is the public development key")
    elif len(hash_key) < MIN_SECRET_CHARS:
        problems.append(f"{HASH_KEY_ENV} is shorter than {MIN_SECRET_CHARS} characters")
    if token_secret is not None and len(token_secret) < MIN_SECRET_CHARS:
        problems.append(f"{TOKEN_SECRET_ENV} is shorter than {MIN_SECRET_CHARS} characters")
    return problems


def check_secrets(hash_key: str | None, token_secret: str | None, dev: bool, host: str) -> None:
    """Refuse to serve without real secrets unless ``dev`` (on loopback only)."""
    if dev:
        if not is_loopback(host):
            raise UserError(f"--dev serves with the public development key: only on a loopback "
                            f"host (127.0.0.1, ::1, localhost), not --host {host}")  # fmt: skip
        return
    problems = secret_problems(hash_key, token_secret)
    if problems:
        raise UserError(
            "refusing to serve without real secrets: " + "; ".join(problems) + ". Set "
            f"{HASH_KEY_ENV} (and optionally {TOKEN_SECRET_ENV}) to random strings of at least "
            f'{MIN_SECRET_CHARS} characters (e.g. python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"), or pass --dev for a local trial on loopback.'
        )


def check_port_free(host: str, port: int) -> None:
    """A clear error if ``host:port`` is taken (bound as uvicorn binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise UserError(f"--host {host} --port {port}: cannot listen: {exc}") from None
            raise UserError(
                f"--port {port}: already in use on {host}. An earlier `rlhf-persona serve` or "
                f"its worker processes may still hold it; `ss -ltnp 'sport = :{port}'` shows "
                "which process (stop it, or pick another --port)."
            ) from None


def watch_supervisor() -> None:
    """In a worker of ``serve --workers N``: exit when the supervisor is gone."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor and supervisor.isdigit() and int(supervisor) != os.getpid():
        exit_with_parent(int(supervisor))
