"""Reliability under faults and concurrency: a service killed with SIGKILL in the middle of
simulated traffic loses no acknowledged event and stores none twice; four worker processes
writing one SQLite file never answer "database is locked"."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from collection_helpers import HASH_KEY, descendants, make_db, warm_up

from rlhf_persona.api.testing import ServiceProcess
from rlhf_persona.serving.traffic import TrafficReport, run_traffic_async


def _stored_event_counts(db, event_ids) -> Counter:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT event_id FROM feedback_events").fetchall()
    wanted = set(event_ids)
    return Counter(event_id for (event_id,) in rows if event_id in wanted)


def test_sigkill_mid_traffic_keeps_every_acknowledged_event_exactly_once(chat_service):
    """Simulated users play against the shared chat service; once a few events are stored the
    service is SIGKILLed and started again on the same port (and left running, as found)."""
    report = TrafficReport()
    traffic = threading.Thread(target=lambda: asyncio.run(run_traffic_async(
        chat_service.base_url, population="four_segments", users=6, turns=4,
        api_key=chat_service.keys["collector"], seed=3, concurrency=6, max_requests=400,
        time_limit_s=150, retry_for_s=90, request_timeout_s=60, embed=False, show=0,
        report=report)))  # fmt: skip
    traffic.start()
    try:
        deadline = time.monotonic() + 90
        while len(report.acked) < 4 and traffic.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        generation = descendants(chat_service.proc.pid)
        chat_service.stop(signal.SIGKILL)  # no shutdown of any kind: in-flight requests are lost
    finally:
        chat_service.start()  # same port: the clients' retries reach the new process
        traffic.join(timeout=150)
        warm_up(chat_service)
    assert not traffic.is_alive(), "traffic did not finish"
    assert generation and not [pid for pid in generation if Path(f"/proc/{pid}").exists()]
    transport_errors = sum(n for k, n in report.answers.items() if not k.split()[-1].isdigit())
    assert transport_errors > 0, report.answers  # the kill hit requests in flight
    assert report.retries > 0 and not report.failures, report.to_dict()
    assert report.stopped is None, report.to_dict()
    stored = _stored_event_counts(chat_service.db, report.posted)
    assert report.acked and set(report.acked) <= set(stored), set(report.acked) - set(stored)
    assert all(stored[e] == 1 for e in report.acked), stored  # stored once despite retries
    assert len(report.acked) == len(set(report.acked)) == len(set(report.posted)) == len(stored)


def _writer(args: tuple[str, str, int, int]) -> dict:
    """One client process: users, replies and feedback from 4 threads; what it was answered."""
    base_url, key, proc, n = args
    statuses: Counter = Counter()
    locked = 0

    def work(thread: int) -> None:
        nonlocal locked
        with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=60) as client:
            user = f"w{proc}-{thread}"
            calls = [("/v1/users", {"user_id": user, "profile": {"age_band": "25-34"}})]
            for i in range(n):
                calls.append(("/v1/replies", {"prompt": f"Q{i}?", "reply": f"A {user} {i}",
                                              "user_id": user}))  # fmt: skip
                event = {"event_id": f"{user}-e{i}", "user_id": user, "kind": "thumbs",
                         "value": 1 if i % 2 else -1, "prompt": f"Q{i}?",
                         "reply": f"A {user} {i}"}  # fmt: skip
                calls.append(("/v1/feedback", event))
            batch = [
                {
                    "event_id": f"{user}-b{i}",
                    "user_id": user,
                    "kind": "rating",
                    "value": 1 + i % 5,
                    "prompt": "B?",
                    "reply": f"R{i}",
                }
                for i in range(40)
            ]
            calls.append(("/v1/feedback/batch", {"events": batch}))  # fmt: skip
            for path, body in calls:
                resp = client.post(path, json=body)
                statuses[resp.status_code] += 1
                locked += "locked" in resp.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    return {"statuses": statuses, "locked": locked}


def _running(pid: int) -> bool:
    try:  # a zombie has exited (it only waits to be reaped)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_four_writer_processes_on_sqlite_never_see_database_locked(tmp_path):
    """... and when the supervisor of ``serve --workers 4`` is SIGKILLed, its workers exit
    with it: the port is free again and a new service starts on it."""
    db = tmp_path / "feedback.db"
    url, keys = make_db(db)
    env = {"RLHF_PERSONA_HASH_KEY": HASH_KEY}
    per_thread = 12
    with ServiceProcess(url, env=env, args=["--workers", "4"]) as service:
        ctx = multiprocessing.get_context("fork")  # no re-import in the children
        with ctx.Pool(4) as pool:
            jobs = [(service.base_url, keys["collector"], p, per_thread) for p in range(4)]
            results = pool.map(_writer, jobs)
        log = service.log()
        workers = descendants(service.proc.pid)
        service.stop(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) >= 4 and not [pid for pid in workers if _running(pid)]
        service.start()  # the same port: nothing holds it any more
        assert httpx.get(service.base_url + "/healthz").status_code == 200
    statuses = sum((r["statuses"] for r in results), Counter())
    assert sum(r["locked"] for r in results) == 0
    assert set(statuses) <= {200, 201}, statuses
    assert "locked" not in log and "Traceback" not in log, log
    with sqlite3.connect(db) as conn:
        events = conn.execute("SELECT COUNT(*) FROM feedback_events").fetchone()[0]
        views = conn.execute("SELECT COUNT(*) FROM reply_views").fetchone()[0]
    assert events == 16 * (per_thread + 40) and views == 16 * per_thread
