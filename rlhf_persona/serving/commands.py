"""Commands of live feedback collection: ``simulate-traffic`` and ``chat-link``.

The ``serve`` command (``rlhf_persona/api/commands.py``) takes the chat's policy options
(``--policy``, ``--policy-registry``, ``--ab-share``, ``--best-of-n``, ``--best-of-n-reward``)
through ``chat_env``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rlhf_persona.errors import UserError
from rlhf_persona.serving.tokens import MAX_TTL_S


def chat_env(
    policy: str | None,
    policy_registry: Path | None,
    ab_share: float | None,
    preload: bool,
    best_of_n: int | None = None,
    best_of_n_reward: Path | None = None,
) -> dict[str, str]:
    """``serve``'s chat options as ``RLHF_PERSONA_CHAT_*`` variables for the app factory;
    checks the registry and reward folders first so a typo fails before the service starts."""
    from rlhf_persona.serving.policy import check_best_of_n, check_registry
    from rlhf_persona.serving.settings import ENV_PREFIX

    check_registry(policy_registry)
    check_best_of_n(1 if best_of_n is None else best_of_n, best_of_n_reward)
    values = {
        "POLICY": policy,
        "AB_SHARE": ab_share,
        "PRELOAD": preload or None,
        "POLICY_REGISTRY": policy_registry.resolve() if policy_registry else None,
        "BEST_OF_N": best_of_n,
        "BEST_OF_N_REWARD": best_of_n_reward.resolve() if best_of_n_reward else None,
    }
    return {ENV_PREFIX + k: str(v) for k, v in values.items() if v is not None}


def simulate_traffic(
    url: str = typer.Option(..., "--url", help="Base URL of a running service."),
    population: str = typer.Option(
        "four_segments", "--population", help="Population name or YAML path (envs/*.yaml)."
    ),
    users: int = typer.Option(8, "--users", min=1, max=100_000, help="Simulated users."),
    turns: int = typer.Option(3, "--turns", min=1, max=1000, help="Chat turns per user."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="RLHF_PERSONA_API_KEY", help="Collector API key."
    ),
    seed: int = typer.Option(0, help="Seeds the users, their prompts and their feedback."),
    concurrency: int = typer.Option(8, min=1, max=1024, help="Users playing at once."),
    max_requests: int = typer.Option(2000, min=1, help="Stop after this many requests."),
    time_limit: float = typer.Option(300.0, min=1, help="Stop after this many seconds."),
    retry_for: float = typer.Option(
        30.0, min=0, help="Retry a failed request (same event id) for up to this many seconds."
    ),
    ab: bool | None = typer.Option(
        None, "--ab/--no-ab", help="Force or forbid A/B turns (default: the service's share)."
    ),
    embed: bool = typer.Option(
        True, help="Compute the MiniLM relevance feature of replies (--no-embed: faster)."
    ),
    show: int = typer.Option(3, min=0, help="Print this many exchanges in full."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON line."),
) -> None:
    """Play simulated users against a running service over HTTP: create them, chat, then give
    feedback per the population's channel mix; print what was sent and the answers."""
    from rlhf_persona.serving.traffic import run_traffic

    if not url.startswith(("http://", "https://")):
        raise UserError(f"--url {url!r}: expected http://HOST:PORT")
    report = run_traffic(
        url.rstrip("/"), population=population, users=users, turns=turns, api_key=api_key,
        seed=seed, concurrency=concurrency, max_requests=max_requests, time_limit_s=time_limit,
        retry_for_s=retry_for, ab=ab, embed=embed, show=show,
    )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    for ex in report.examples:
        typer.echo(f"user {ex['user_id']} asked: {ex['prompt']!r}")
        for i, text in enumerate(ex["replies"]):
            typer.echo(f"  reply {'AB'[i] if len(ex['replies']) == 2 else ''} ({ex['policy']}): "
                       f"{text[:100]!r}")  # fmt: skip
        fb = ex["feedback"]
        typer.echo(f"  sent {fb['kind']} value={fb['value']} tags={fb['reason_tags']} -> "
                   f"{ex['answer']}")  # fmt: skip
    summary = report.to_dict()
    typer.echo(f"sent: {summary['sent']}")
    typer.echo("answers:")
    for key, count in summary["answers"].items():
        typer.echo(f"  {key:40s} {count}")
    if report.failures:
        typer.echo(f"gave up: {dict(report.failures)}")
    stopped = f", stopped early: {report.stopped}" if report.stopped else ""
    typer.echo(
        f"{report.requests} requests ({report.retries} retries), "
        f"{len(report.acked)} events acknowledged, {report.elapsed_s:.1f}s{stopped}"
    )


def chat_link(
    user_id: str = typer.Argument(..., help="The user the link is for."),
    db: str | None = typer.Option(None, "--db", help="Database URL or SQLite path."),
    base_url: str = typer.Option(
        "http://127.0.0.1:8000", "--base-url", help="Where the service is reachable."
    ),
    ttl: int = typer.Option(3600, min=10, max=MAX_TTL_S, help="Lifetime in seconds."),
) -> None:
    """Print a chat page link with a short-lived token for USER (signed with the key the service
    uses: RLHF_PERSONA_CHAT_TOKEN_SECRET, else derived from RLHF_PERSONA_HASH_KEY)."""
    import os

    from rlhf_persona.feedback.db import resolve_url
    from rlhf_persona.feedback.store import FeedbackStore
    from rlhf_persona.serving.tokens import mint_token, token_key

    with FeedbackStore(resolve_url(db), must_exist=True) as store:
        user_id = store.find_user(user_id)["user_id"]  # a clear error for unknown / deleted
    key = token_key(os.environ.get("RLHF_PERSONA_CHAT_TOKEN_SECRET"))
    typer.echo(f"{base_url.rstrip('/')}/chat?token={mint_token(key, user_id, ttl)}")


def register(app: typer.Typer) -> None:
    """Mount the commands on the main CLI (called from ``rlhf_persona.cli``)."""
    app.command("simulate-traffic")(simulate_traffic)
    app.command("chat-link")(chat_link)
