"""Simulated users playing against a running service over HTTP (``rlhf-persona
simulate-traffic``).

Each simulated user (sampled from a population, ``envs/*.yaml``) is created with its profile
(``POST /v1/users``), then plays ``turns`` turns: a prompt drawn as the simulator draws them,
``POST /v1/chat``, and feedback on the reply (or the A/B pair) drawn by ``FeedbackSimulator``
from the user's hidden taste and the population's channel mix (thumbs / rating / pairwise /
abstain), sent with ``POST /v1/feedback``. Users play concurrently (``concurrency`` at a time).

Bounded: at most ``max_requests`` requests and ``time_limit_s`` seconds. Reliable: a failed
request (no answer, 429 or 5xx) is retried with backoff for up to ``retry_for_s`` seconds with
the same body, so a feedback event keeps its ``event_id`` and the service stores it once even if
an earlier attempt got through. ``TrafficReport.acked`` lists the events answered 2xx.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass
class TrafficReport:
    """What was sent and what the service answered."""

    sent: Counter = field(default_factory=Counter)  # "chat", "feedback:thumbs", ...
    answers: Counter = field(default_factory=Counter)  # "POST /v1/chat 200", ...
    failures: Counter = field(default_factory=Counter)  # requests given up, by reason
    posted: list[str] = field(default_factory=list)  # event ids sent (retries counted once)
    acked: list[str] = field(default_factory=list)  # event ids answered 2xx
    examples: list[dict[str, Any]] = field(default_factory=list)  # first exchanges, in full
    retries: int = 0
    requests: int = 0
    elapsed_s: float = 0.0
    stopped: str | None = None  # why the run ended early (request or time bound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": dict(self.sent), "answers": dict(sorted(self.answers.items())),
            "failures": dict(self.failures), "acked_events": len(self.acked),
            "retries": self.retries, "requests": self.requests,
            "elapsed_s": round(self.elapsed_s, 2), "stopped": self.stopped,
        }  # fmt: skip


class _Budget(Exception):
    """The request or time bound is reached."""


class TrafficClient:
    """HTTP side of the simulation: bounded, retrying requests with accounting."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        report: TrafficReport,
        max_requests: int,
        deadline: float,
        retry_for_s: float,
    ) -> None:
        self.client = client
        self.report = report
        self.max_requests = max_requests
        self.deadline = deadline
        self.retry_for_s = retry_for_s

    def _check_budget(self) -> None:
        if self.report.requests >= self.max_requests:
            self.report.stopped = self.report.stopped or f"max_requests={self.max_requests}"
            raise _Budget
        if time.monotonic() >= self.deadline:
            self.report.stopped = self.report.stopped or "time limit"
            raise _Budget

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response | None:
        """POST with retries; the final response, or None when every attempt failed."""
        give_up = min(time.monotonic() + self.retry_for_s, self.deadline)
        delay = 0.1
        while True:
            self._check_budget()
            self.report.requests += 1
            try:
                resp = await self.client.post(path, json=body)
                self.report.answers[f"POST {path} {resp.status_code}"] += 1
                if resp.status_code not in RETRY_STATUS:
                    return resp
                reason = f"HTTP {resp.status_code}"
            except httpx.TransportError as exc:  # refused, reset, timed out: no answer
                self.report.answers[f"POST {path} {type(exc).__name__}"] += 1
                reason = type(exc).__name__
            if time.monotonic() + delay > give_up:
                self.report.failures[f"POST {path} {reason}"] += 1
                return None
            self.report.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _pick_events(sim, idx: int, prompt: str, replies: list[str], turn: int) -> list[dict]:
    """The simulated user's feedback on one chat answer (none when they abstain)."""
    if len(replies) == 2:
        return sim.respond([idx], [prompt], [replies[0]], [replies[1]], round=turn)
    return sim.respond([idx], [prompt], [replies[0]], round=turn)


async def _play_user(
    http: TrafficClient, sim, users, idx: int, prompts: list[list[str]], ab: bool | None,
    show: int,
) -> None:  # fmt: skip
    report = http.report
    user_id = users.ids[idx]
    for turn, turn_prompts in enumerate(prompts):
        prompt = turn_prompts[idx]
        body: dict[str, Any] = {"user_id": user_id, "message": prompt}
        if ab is not None:
            body["ab"] = ab
        report.sent["chat"] += 1
        resp = await http.post("/v1/chat", body)
        if resp is None or resp.status_code != 200:
            continue
        chat = resp.json()
        texts = [r["text"] for r in chat["replies"]]
        for event in _pick_events(sim, idx, prompt, texts, turn):
            report.sent[f"feedback:{event['kind']}"] += 1
            report.posted.append(event["event_id"])
            ack = await http.post("/v1/feedback", event)
            if ack is not None and 200 <= ack.status_code < 300:
                report.acked.append(event["event_id"])
            if len(report.examples) < show:
                answer = ack.json() if ack is not None else None
                report.examples.append({"user_id": user_id, "prompt": prompt, "replies": texts,
                                        "policy": chat["policy"], "feedback": event,
                                        "answer": answer})  # fmt: skip


async def _create_users(http: TrafficClient, users, concurrency: int) -> list[int]:
    """Create (or update) every user; returns the indices the service accepted."""
    gate = asyncio.Semaphore(concurrency)

    async def create(i: int, record: dict) -> int | None:
        async with gate:
            http.report.sent["user"] += 1
            resp = await http.post("/v1/users", record)
            return i if resp is not None and resp.status_code in (200, 201) else None

    done = await asyncio.gather(
        *(create(i, r) for i, r in enumerate(users.records())), return_exceptions=True
    )
    _reraise(done)
    return [i for i in done if isinstance(i, int)]


def _reraise(results: list[Any]) -> None:
    """Raise the first real error of gathered tasks (a reached bound comes last)."""
    errors = [r for r in results if isinstance(r, BaseException)]
    for err in errors:
        if not isinstance(err, _Budget):
            raise err
    if errors:
        raise errors[0]


async def run_traffic_async(
    url: str,
    population: str = "four_segments",
    users: int = 8,
    turns: int = 3,
    api_key: str | None = None,
    *,
    seed: int = 0,
    concurrency: int = 8,
    max_requests: int = 1000,
    time_limit_s: float = 120.0,
    retry_for_s: float = 30.0,
    request_timeout_s: float = 60.0,
    ab: bool | None = None,
    embed: bool = True,
    show: int = 3,
    report: TrafficReport | None = None,
) -> TrafficReport:
    """Play the simulation against ``url``; see the module docstring. ``ab`` forces (True) or
    forbids (False) A/B turns; None leaves it to the service's share. Pass ``report`` to watch
    it fill while the traffic runs (e.g. from another thread)."""
    from rlhf_persona.simulation import FeedbackSimulator, load_population, sample_prompts

    pop = load_population(population)
    sampled = pop.sample_users(users, seed=seed)
    sim = FeedbackSimulator(sampled, seed=seed, embed=embed)
    all_idx = list(range(len(sampled)))
    prompts = [sample_prompts(sampled, all_idx, seed=seed, round=t)[0] for t in range(turns)]
    report = report if report is not None else TrafficReport()
    start = time.monotonic()
    headers = {"X-API-Key": api_key} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=request_timeout_s, limits=limits
    ) as client:
        http = TrafficClient(client, report, max_requests, start + time_limit_s, retry_for_s)
        try:
            created = await _create_users(http, sampled, concurrency)
            gate = asyncio.Semaphore(concurrency)

            async def play(i: int) -> None:
                async with gate:
                    await _play_user(http, sim, sampled, i, prompts, ab, show)

            _reraise(await asyncio.gather(*(play(i) for i in created), return_exceptions=True))
        except _Budget:
            pass
    report.elapsed_s = time.monotonic() - start
    return report


def run_traffic(url: str, **kwargs: Any) -> TrafficReport:
    """Synchronous ``run_traffic_async``."""
    return asyncio.run(run_traffic_async(url, **kwargs))
