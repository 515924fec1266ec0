"""Benchmark of live feedback collection: chat replies and feedback posts on a real service.

Starts ``rlhf-persona serve`` (real uvicorn, real SQLite file) with the chat policy
(``--policy``, default the embedded tiny policy), waits until it is loaded, then for each
concurrency level runs that many simulated users, each sending ``POST /v1/chat`` (one reply per
turn) as soon as its previous reply arrived, for ``--duration`` seconds:

- ``chat_replies_per_s``: replies answered per second, per concurrency level;
- ``chat_p50_ms`` / ``chat_p99_ms``: latency of a chat request, per concurrency level;
- ``feedback_p99_ms_under_chat_load``: p99 latency of single ``POST /v1/feedback`` requests
  (one every ``--feedback-interval`` seconds, from a process of their own) sent while the
  highest chat level runs (target: <= 100 ms);
- ``service_peak_rss_mb``: peak resident memory (VmHWM) of the service: its API process plus
  the generation process (a sum of peaks, so an upper bound of the peak together).

Prints one line per level, then a final JSON line.

    python scripts/bench_collection.py [--policy embedded:tiny] [--levels 1,8,32]
        [--duration 20] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("RLHF_PERSONA_QUIET_DEV_KEY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rlhf_persona.api.testing import ServiceProcess  # noqa: E402
from rlhf_persona.feedback.store import FeedbackStore  # noqa: E402

PROMPTS = [
    "How do I get started with cooking?", "Any tips for a first marathon?",
    "What should I read about history?", "How can I save money each month?",
    "What is a good way to learn programming?", "How do I fix a leaking tap?",
    "Can you suggest a weekend trip?", "How do I prepare for a job interview?",
]  # fmt: skip


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


async def chat_level(client: httpx.AsyncClient, users: int, duration: float) -> dict:
    """``users`` clients chatting back to back for ``duration`` seconds."""
    latencies: list[float] = []
    replies = 0
    stop = time.perf_counter() + duration

    async def user(i: int) -> None:
        nonlocal replies
        turn = 0
        while time.perf_counter() < stop:
            body = {"user_id": f"bench-{i}", "message": PROMPTS[(i + turn) % len(PROMPTS)],
                    "ab": False}  # fmt: skip
            start = time.perf_counter()
            resp = await client.post("/v1/chat", json=body)
            resp.raise_for_status()
            latencies.append(time.perf_counter() - start)
            replies += len(resp.json()["replies"])
            turn += 1

    start = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(users)))
    elapsed = time.perf_counter() - start
    return {"replies_per_s": round(replies / elapsed, 2), "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99), "requests": len(latencies)}  # fmt: skip


def feedback_prober(url: str, key: str, stop, interval: float, out) -> None:
    """Single feedback posts, one at a time, until ``stop`` is set; sends their latencies to
    ``out``. A process of its own: the chat clients' event loop must not delay its timing."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as client:
        i = 0
        while not stop.is_set():
            event = {"event_id": f"bench-fb-{i}", "user_id": "bench-0", "kind": "thumbs",
                     "value": 1 if i % 2 else -1, "prompt": PROMPTS[i % len(PROMPTS)],
                     "reply": f"Reply number {i}."}  # fmt: skip
            start = time.perf_counter()
            resp = client.post("/v1/feedback", json=event)
            latencies.append(time.perf_counter() - start)
            assert resp.status_code == 201, resp.text
            i += 1
            time.sleep(interval)
    out.put(latencies)


async def run(args, service: ServiceProcess, key: str) -> dict:
    limits = httpx.Limits(max_connections=max(args.levels) + 4)
    async with httpx.AsyncClient(base_url=service.base_url, headers={"X-API-Key": key},
                                 timeout=600, limits=limits) as client:  # fmt: skip
        warm = await client.post("/v1/chat", json={"user_id": "bench-0", "message": "Hi"})
        warm.raise_for_status()  # the policy is loaded and warm
        results = {}
        probe: list[float] = []
        ctx = multiprocessing.get_context("fork")
        for level in args.levels:
            prober = None
            if level == max(args.levels):  # feedback latency under the heaviest chat load
                stop, out = ctx.Event(), ctx.Queue()
                prober = ctx.Process(target=feedback_prober, args=(
                    service.base_url, key, stop, args.feedback_interval, out))  # fmt: skip
                prober.start()
            results[level] = await chat_level(client, level, args.duration)
            if prober is not None:
                stop.set()
                probe = out.get(timeout=120)
                prober.join()
            print(f"{level:3d} users: {results[level]}", flush=True)
    return {"levels": results, "feedback": probe}


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the generation process is a child of the service)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += process_tree(int(child))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="embedded:tiny")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds per level.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--feedback-interval", type=float, default=0.05)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="Generation threads of the service (default: the service's).",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="Generate in a thread of the service (for comparison).",
    )
    args = parser.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]
    from rlhf_persona.models import resolve_model_path

    resolve_model_path(args.policy)  # build an embedded policy now, not inside the service
    tmp = Path(tempfile.mkdtemp(prefix="bench-collection-"))
    with FeedbackStore(tmp / "feedback.db") as store:
        key = store.create_api_key("collector")
        store.upsert_users([{"user_id": f"bench-{i}"} for i in range(max(args.levels))])
    env = {"RLHF_PERSONA_CHAT_MAX_NEW_TOKENS": str(args.max_new_tokens),
           "RLHF_PERSONA_CHAT_PRELOAD": "1"}  # fmt: skip
    if args.torch_threads:
        env["RLHF_PERSONA_CHAT_TORCH_THREADS"] = str(args.torch_threads)
    if args.in_process:
        env["RLHF_PERSONA_CHAT_SEPARATE_PROCESS"] = "0"
    service = ServiceProcess(f"sqlite:///{tmp / 'feedback.db'}", env=env,
                             args=["--policy", args.policy, "--dev"]).start()  # fmt: skip
    try:
        out = asyncio.run(run(args, service, key))
        rss = {pid: peak_rss_mb(pid) for pid in process_tree(service.proc.pid)}
    finally:
        service.stop()
    levels = out["levels"]
    print(json.dumps({"policy": args.policy, "max_new_tokens": args.max_new_tokens,
                      "generation": "in-process" if args.in_process else "child process",
                      "duration_s": args.duration, "cpus": os.cpu_count(),
                      "load_avg_1m": round(os.getloadavg()[0], 2),
                      "requests": {k: v["requests"] for k, v in levels.items()},
                      "feedback_requests": len(out["feedback"]),
                      "peak_rss_mb_per_process": list(rss.values()),
                      "chat_p50_ms": {k: v["p50_ms"] for k, v in levels.items()}}),
          file=sys.stderr)  # fmt: skip
    print(json.dumps({
        "chat_replies_per_s": {str(k): v["replies_per_s"] for k, v in levels.items()},
        "chat_p99_ms": {str(k): v["p99_ms"] for k, v in levels.items()},
        "feedback_p99_ms_under_chat_load": percentile_ms(out["feedback"], 99),
        "service_peak_rss_mb": round(sum(rss.values()), 1),  # API process + generation
    }))  # fmt: skip


if __name__ == "__main__":
    main()
