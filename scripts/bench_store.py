"""Benchmark of the feedback store and its HTTP API.

Measures, on the same synthetic events (each carrying its prompt and reply texts, as the
simulator sends them):

- ``store_events_per_s_sqlite`` / ``store_events_per_s_postgres``: ``record_events`` in batches
  of 1,000 (PostgreSQL: a throwaway server started like the tests do; null without binaries);
- ``raw_executemany_events_per_s``: the same event rows inserted into ``feedback_events`` with
  plain ``sqlite3.executemany`` (same schema, pragmas and batch size) - the ceiling;
- ``http_batch_events_per_s``: ``POST /v1/feedback/batch`` with 1,000 events per request, the
  median of ``--repeat`` runs of ``--events`` fresh events each (all runs in
  ``http_batch_runs_events_per_s``: one run lasts about a second, and this shared VM's speed
  varies by ±20% between seconds);
- ``http_single_events_per_s``, ``http_single_p50_ms``, ``http_single_p99_ms``: ``POST
  /v1/feedback`` with one event per request from 16 concurrent keep-alive clients;

against a real uvicorn (``rlhf-persona serve --workers N``, N = ``--workers``, default one per
CPU) on loopback and a real SQLite file; ``http_workers`` in the output says how many. The load
generator is a minimal asyncio HTTP/1.1 client in this process, so that it costs little CPU
next to the server on a small machine. Prints a final JSON line.

    python scripts/bench_store.py [--events 20000] [--single 8000] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

os.environ.setdefault("RLHF_PERSONA_QUIET_DEV_KEY", "1")

from rlhf_persona.api.testing import ServiceProcess  # noqa: E402
from rlhf_persona.feedback.store import FeedbackStore  # noqa: E402
from rlhf_persona.feedback.tables import utcnow  # noqa: E402
from rlhf_persona.feedback.testing import PostgresServer, postgres_available  # noqa: E402

BATCH = 1000
N_USERS = 500
_TEXT = (
    "sure here is a short answer with some detail about the topic you asked for "
    "consider these steps first second finally great question thanks"
)
WORDS = _TEXT.split(" ")


def make_events(n: int, prefix: str, seed: int) -> list[dict]:
    """Deterministic events: 80% thumbs, 15% ratings, 5% pairwise, over 2,000 prompts."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        prompt = (
            f"Question {rng.randrange(2000)}: how do I {rng.choice(WORDS)} my {rng.choice(WORDS)}?"
        )
        reply = " ".join(rng.choices(WORDS, k=rng.randint(8, 30))) + f" ({rng.randrange(10**6)})"
        ev = {"event_id": f"{prefix}-{i}", "user_id": f"user-{rng.randrange(N_USERS)}",
              "prompt": prompt, "reply": reply}  # fmt: skip
        roll = rng.random()
        if roll < 0.80:
            ev.update(kind="thumbs", value=rng.choice((1, -1)))
        elif roll < 0.95:
            ev.update(kind="rating", value=rng.randint(1, 5))
        else:
            ev.update(kind="pairwise", value=rng.choice((1, -1)), other_reply=reply + " Also.")
        events.append(ev)
    return events


def add_users(store: FeedbackStore) -> None:
    store.upsert_users([{"user_id": f"user-{i}", "profile": {"age_band": "25-34"}}
                        for i in range(N_USERS)])  # fmt: skip


def bench_store(url: str, events: list[dict]) -> float:
    store = FeedbackStore(url)
    try:
        add_users(store)
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(events), BATCH):
            results = store.record_events(events[i : i + BATCH])
            assert all(r.status == "created" for r in results), results[0]
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert store.counts()["events"] == len(events)
        # CPU time of this process only (the database server's is not in it for PostgreSQL).
        per_event = 1e6 * cpu / len(events)
        print(f"  {store.dialect}: {per_event:.0f} us CPU per event in this process "
              f"({len(events) / cpu:.0f} events per CPU-second)", file=sys.stderr)  # fmt: skip
    finally:
        store.close()
    return len(events) / elapsed


def bench_raw_executemany(path: Path, events: list[dict]) -> float:
    """The event rows alone, inserted with sqlite3.executemany: the ceiling of the store."""
    store = FeedbackStore(path)  # same schema (migrations) and pragmas
    add_users(store)
    rids = {ev["reply"]: store.add_reply("p", ev["reply"]) for ev in events[:1]}
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
        conn.execute(f"PRAGMA {pragma}")
    user_pk = dict(conn.execute("SELECT user_id, id FROM users"))
    reply_pk = conn.execute(
        "SELECT id FROM replies WHERE reply_id = ?", (next(iter(rids.values())),)
    ).fetchone()[0]
    now = utcnow().replace(tzinfo=None).isoformat(" ", "microseconds")
    rows = [(ev["event_id"], user_pk[ev["user_id"]], ev["kind"], reply_pk, None, ev["value"], None,
             None, now, now, "0" * 64) for ev in events]  # fmt: skip
    start = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO feedback_events (event_id, user_pk, kind, reply_pk, other_reply_pk, value,"
            " reason_tags, comment, created_at, received_at, payload_hash)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows[i : i + BATCH],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


# -- a minimal HTTP/1.1 keep-alive client ---------------------------------------------------
class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def post(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def http_batch(port: int, key: str, events: list[dict], clients: int = 2) -> float:
    """``clients`` uploaders, each posting its batches one after another, a connection per
    batch (as periodic uploaders do). With a few long-lived connections the kernel may hand
    all of them to one uvicorn worker (measured: 4 keep-alive connections on one of two
    workers in 2 of 3 runs), and the figure would be one worker's."""
    bodies = [orjson.dumps({"events": events[i : i + BATCH]}) for i in range(0, len(events), BATCH)]
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue:
            body = queue.pop()  # before the first await: the other uploaders share the queue
            conn = await Connection("127.0.0.1", port).open()
            status, body = await conn.post("/v1/feedback/batch", body, key)
            conn.close()
            counts = orjson.loads(body)["counts"]
            assert status == 200 and counts.get("created") == BATCH, (status, counts)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return len(events) / (time.perf_counter() - start)


async def http_single(port: int, key: str, events: list[dict], clients: int = 16):
    bodies = [orjson.dumps(ev) for ev in events]
    conns = [await Connection("127.0.0.1", port).open() for _ in range(clients)]
    for i, conn in enumerate(conns):  # warm-up (not counted): one duplicate-free post each
        await conn.post("/v1/feedback", orjson.dumps({**events[0], "event_id": f"warm-{i}"}), key)
    latencies: list[float] = []
    queue = list(reversed(bodies))

    async def worker(conn: Connection) -> None:
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            status, _ = await conn.post("/v1/feedback", body, key)
            latencies.append(time.perf_counter() - t0)
            assert status == 201, status

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    latencies.sort()
    pct = lambda q: 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return len(events) / elapsed, pct(0.50), pct(0.99)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _service_pids(pid: int, workers: int, timeout: float = 30.0) -> list[int]:
    """The serving processes: uvicorn itself with one worker, else its worker children (once
    they are all up; the supervisor only watches them)."""
    if workers == 1:
        return [pid]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        # multiprocessing's resource tracker is a child too; it serves nothing
        children = [c for c in children if b"resource_tracker" not in _cmdline(c)]
        if len(children) >= workers:
            time.sleep(3)  # /healthz answered from one worker; give the others time to start
            return children
        time.sleep(0.1)
    raise RuntimeError(f"uvicorn started {len(children)} of {workers} workers")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:  # gone already
        return b"resource_tracker"


def bench_http(tmp: Path, batch_runs: list[list[dict]], single_events: list[dict],
               workers: int) -> dict:  # fmt: skip
    db = tmp / "http.db"
    store = FeedbackStore(db)
    add_users(store)
    key = store.create_api_key("collector", "bench")
    store.close()
    env = {"RLHF_PERSONA_MAX_BODY_BYTES": str(64 << 20)}
    args = ["--workers", str(workers), "--dev"]  # a throwaway store: development keys
    with ServiceProcess(f"sqlite:///{db}", env=env, args=args) as svc:
        pids = _service_pids(svc.proc.pid, workers)
        cpu0 = sum(map(_cpu_seconds, pids))
        # Two requests in flight per worker: one being written while the next is parsed.
        batch_rates = [asyncio.run(http_batch(svc.port, key, events, clients=2 * workers))
                       for events in batch_runs]  # fmt: skip
        cpu1 = sum(map(_cpu_seconds, pids))
        single_rate, p50, p99 = asyncio.run(http_single(svc.port, key, single_events))
        cpu2 = sum(map(_cpu_seconds, pids))
    # Server CPU per event: a figure that depends less on how loaded the machine is.
    n_batch = sum(map(len, batch_runs))
    print(f"batch runs: {', '.join(f'{r:.0f}' for r in batch_rates)} events/s", file=sys.stderr)
    print(f"server CPU per event ({workers} worker(s)): batch "
          f"{1e6 * (cpu1 - cpu0) / n_batch:.0f} us, "
          f"single {1e6 * (cpu2 - cpu1) / len(single_events):.0f} us", file=sys.stderr)  # fmt: skip
    store = FeedbackStore(db)
    stored = store.counts()["events"]
    store.close()
    expected = n_batch + len(single_events) + 16
    assert stored == expected, f"{stored} events stored, {expected} acknowledged"
    return {"http_batch_events_per_s": statistics.median(batch_rates),
            "http_batch_runs_events_per_s": [round(r, 1) for r in batch_rates],
            "http_single_events_per_s": single_rate,
            "http_single_p50_ms": p50, "http_single_p99_ms": p99,
            "http_workers": workers}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per store/batch run")
    parser.add_argument("--single", type=int, default=8_000, help="events posted one by one")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="batch-endpoint runs (fresh events each); the median is reported",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="uvicorn worker processes (default: one per CPU)")  # fmt: skip
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        events = make_events(args.events, "s", seed=0)
        out["store_events_per_s_sqlite"] = bench_store(f"sqlite:///{tmp / 'store.db'}", events)
        print(f"store sqlite: {out['store_events_per_s_sqlite']:.0f} events/s", file=sys.stderr)
        out["store_events_per_s_postgres"] = None
        if postgres_available():
            with PostgresServer() as pg:
                out["store_events_per_s_postgres"] = bench_store(pg.create_database(), events)
            print(f"store postgres: {out['store_events_per_s_postgres']:.0f} events/s",
                  file=sys.stderr)  # fmt: skip
        out["raw_executemany_events_per_s"] = bench_raw_executemany(tmp / "raw.db", events)
        print(f"raw executemany: {out['raw_executemany_events_per_s']:.0f} events/s",
              file=sys.stderr)  # fmt: skip
        batch_runs = [make_events(args.events, f"hb{i}", seed=1 + 10 * i)
                      for i in range(args.repeat)]  # fmt: skip
        http = bench_http(tmp, batch_runs,
                          make_events(args.single, "hs", seed=2), args.workers)  # fmt: skip
        out.update(http)
    out = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cpus, load average {load[0]:.1f} (shared)", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
