"""``rlhf-persona serve``: the feedback HTTP API and its chat under uvicorn.

The database options are those of the store's commands (``rlhf_persona.feedback.commands``); the
chat's policy options become ``RLHF_PERSONA_CHAT_*`` variables (``serving.commands.chat_env``)
that every worker's app factory (``app.app_from_env``) reads.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rlhf_persona.feedback.commands import ConfigOption, DbOption


def serve(
    db: str | None = DbOption,
    config: Path | None = ConfigOption,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(1, min=1, help="Worker processes."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
    access_log: bool = typer.Option(False, help="Log every request (slower)."),
    policy: str | None = typer.Option(
        None, help="Chat: base policy spec (default embedded:tiny) when there is no registry."
    ),
    policy_registry: Path | None = typer.Option(
        None, help="Chat: adapter registry folder; users get their segment's policy."
    ),
    ab_share: float | None = typer.Option(
        None, min=0, max=1, help="Chat: share of turns with two replies (A/B), default 0.2."
    ),
    preload_policy: bool = typer.Option(
        False, help="Chat: load the policy at start (else on the first chat request)."
    ),
    best_of_n: int | None = typer.Option(
        None,
        help="Chat: send the best of N sampled replies per request as ranked by "
        "--best-of-n-reward (default 1 = off; cost ≈ N × one generation).",
    ),
    best_of_n_reward: Path | None = typer.Option(
        None,
        help="Chat: saved reward model folder ranking the best-of-n candidates (a user-level "
        "reward scores per user; or a segment RewardModel / FeatureReward).",
    ),
    dev: bool = typer.Option(
        False,
        "--dev",
        help="Local trial: allow the public development hash key (loopback hosts only). "
        "Without it, RLHF_PERSONA_HASH_KEY must be a real secret (docs/security.md).",
    ),
) -> None:
    """Run the feedback HTTP API under uvicorn (OpenAPI docs at /docs, chat page at /chat)."""
    import os

    import uvicorn

    from rlhf_persona.api import startup
    from rlhf_persona.api.settings import ServiceSettings
    from rlhf_persona.feedback.commands import open_store, store_url
    from rlhf_persona.serving.commands import chat_env

    url = store_url(db, config)
    os.environ.update(
        chat_env(policy, policy_registry, ab_share, preload_policy, best_of_n, best_of_n_reward)
    )
    settings = ServiceSettings(**({"dev": True} if dev else {}))
    token_secret = os.environ.get(startup.TOKEN_SECRET_ENV)
    startup.check_secrets(settings.hash_key, token_secret, settings.dev, host)
    startup.check_port_free(host, port)
    open_store(url).close()  # migrate once, before the workers start
    os.environ["RLHF_PERSONA_DATABASE_URL"] = url  # read by every worker's app factory
    os.environ[startup.SUPERVISOR_ENV] = str(os.getpid())  # workers exit when it is gone
    if settings.dev:
        os.environ[startup.DEV_ENV] = "1"
        os.environ.setdefault("RLHF_PERSONA_QUIET_DEV_KEY", "1")  # said once, here
        typer.echo("serving with --dev: development keys, loopback only", err=True)
    uvicorn.run(
        "rlhf_persona.api.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )


def register(app: typer.Typer) -> None:
    """Mount ``serve`` on the main CLI (called from ``rlhf_persona.cli``)."""
    app.command("serve")(serve)
