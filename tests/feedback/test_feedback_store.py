"""Store semantics on SQLite and on a real PostgreSQL: migrations, idempotency, vote changes
with history, pairwise rules, deletion with tombstones, PII masking, segments."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from feedback_helpers import event

from rlhf_persona.feedback import migrate
from rlhf_persona.feedback.db import WalCheckpointer, WriteLock, make_engine
from rlhf_persona.feedback.errors import Conflict, Gone, NotFound
from rlhf_persona.feedback.schemas import reply_id_for
from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.feedback.tables import metadata


def test_migrations_upgrade_match_models_and_downgrade(db_url):
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
            )
            assert diff == []  # the migrations create exactly the models' schema
        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        tables = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
        assert tables == set()
        migrate.upgrade(engine)  # and back up again
        assert "feedback_events" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_upgrade_from_the_first_schema_keeps_current_values(db_url):
    """0002 rebuilds feedback_current without its event foreign key and 0003 keys it reply
    first: the rows survive, the history and vote changes read the same, deletion finds them,
    and downgrades put the old key order and the foreign key back."""
    engine = make_engine(db_url)
    try:
        migrate.upgrade(engine, "0001")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (id, user_id, profile, meta, consent,"
                                 " created_at, updated_at) VALUES (1, 'alice', '{}', '{}', true,"
                                 " '2026-01-01', '2026-01-01')"))  # fmt: skip
            conn.execute(sa.text("INSERT INTO replies (id, reply_id, prompt_hash, prompt, text,"
                                 " created_at) VALUES (1, 'r1', 'h', 'Hi?', 'Hello.',"
                                 " '2026-01-01')"))  # fmt: skip
            for pk, value in ((1, 1), (2, -1)):  # a vote and its change
                conn.execute(sa.text(
                    "INSERT INTO feedback_events (id, event_id, user_pk, kind, reply_pk, value,"
                    " created_at, received_at, payload_hash) VALUES"
                    f" ({pk}, 'e{pk}', 1, 'thumbs', 1, {value}, '2026-01-0{pk}', '2026-01-0{pk}',"
                    f" 'p{pk}')"))  # fmt: skip
            conn.execute(sa.text("INSERT INTO feedback_current VALUES (1, 1, 0, 'thumbs', 2,"
                                 " '2026-01-02', '2026-01-02')"))  # fmt: skip
        migrate.upgrade(engine)
        assert sa.inspect(engine).get_foreign_keys("feedback_current") == []
        key = sa.inspect(engine).get_pk_constraint("feedback_current")["constrained_columns"]
        assert key == ["reply_pk", "user_pk", "other_key", "kind"]  # 0003: reply first
        store = FeedbackStore(db_url, hash_key="k")
        try:
            assert [e["value"] for e in store.events()] == [-1]
            assert [e["value"] for e in store.events(history=True)] == [1, -1]
            assert store.delete_user("alice")["events"] == 2
        finally:
            store.close()
        migrate.downgrade(engine, "0002")
        key = sa.inspect(engine).get_pk_constraint("feedback_current")["constrained_columns"]
        assert key == ["user_pk", "reply_pk", "other_key", "kind"]
        migrate.downgrade(engine, "0001")
        fks = sa.inspect(engine).get_foreign_keys("feedback_current")
        assert [fk["referred_table"] for fk in fks] == ["feedback_events"]
    finally:
        engine.dispose()


def test_same_event_twice_is_stored_once_and_answered_the_same(store):
    store.upsert_user("alice")
    first = store.record_events([event("e1", comment="nice")])[0]
    again = store.record_events([event("e1", comment="nice")])[0]
    assert first.status == "created"
    assert again.status == "duplicate"
    assert again.reply_id == first.reply_id
    # within one batch, too
    toast = event("e2", value=-1, reply="Toast.")
    both = store.record_events([toast, dict(toast)])
    assert [r.status for r in both] == ["created", "duplicate"]
    assert store.counts()["events"] == 2
    # the same id for different content is a conflict, not an overwrite
    clash = store.record_events([event("e1", value=-1)])[0]
    assert (clash.status, clash.code, clash.field) == ("error", 409, "event_id")
    assert store.events()[0]["value"] == 1


def test_vote_change_updates_current_value_and_keeps_history(store):
    store.upsert_user("alice")
    assert store.record_events([event("v1", value=1)])[0].status == "created"
    assert store.record_events([event("v2", value=-1)])[0].status == "updated"
    current = store.events("thumbs")
    assert [(e["event_id"], e["value"]) for e in current] == [("v2", -1)]
    history = store.events("thumbs", history=True)
    assert [(e["event_id"], e["value"]) for e in history] == [("v1", 1), ("v2", -1)]
    # an event older than the current value goes to the history only
    old = store.record_events([event("v0", value=1, created_at="2001-01-01T00:00:00Z")])[0]
    assert old.status == "created" and "older" in old.message
    assert [e["value"] for e in store.events("thumbs")] == [-1]
    # a rating on the same reply is another kind: its own current value
    store.record_events([event("r1", kind="rating", value=4)])
    assert sorted(e["kind"] for e in store.events()) == ["rating", "thumbs"]


def test_pairwise_needs_two_replies_to_the_same_prompt(store):
    store.upsert_user("alice")
    ok = store.record_events([event("p1", kind="pairwise", other_reply="Pancakes.", value=-1)])[0]
    assert ok.status == "created" and ok.other_reply_id
    other_prompt = store.add_reply("What is a good dinner?", "Soup.")
    bad = store.record_events([{"event_id": "p2", "user_id": "alice", "kind": "pairwise",
                                "reply_id": ok.reply_id, "other_reply_id": other_prompt,
                                "value": 1}])[0]  # fmt: skip
    assert (bad.status, bad.code, bad.field) == ("error", 422, "other_reply_id")
    assert "same prompt" in bad.message
    missing = store.record_events([event("p3", kind="pairwise", value=1)])[0]
    assert (missing.code, missing.field) == (422, "other_reply")
    unknown = store.record_events([{"event_id": "p4", "user_id": "alice", "kind": "pairwise",
                                    "reply_id": ok.reply_id, "other_reply_id": "r_missing",
                                    "value": 1}])[0]  # fmt: skip
    assert (unknown.code, unknown.field) == (404, "other_reply_id")
    # B-vs-A by the same user is the same choice as A-vs-B: it updates, it does not add
    flip = {"event_id": "p5", "user_id": "alice", "kind": "pairwise", "reply_id": ok.other_reply_id,
            "other_reply_id": ok.reply_id, "value": 1}  # fmt: skip
    assert store.record_events([flip])[0].status == "updated"
    assert len(store.events("pairwise")) == 1


def test_batch_answers_each_event_and_stores_only_the_valid_ones(store):
    store.upsert_user("alice")
    results = store.record_events([
        event("b1"),
        event("b2", kind="rating", value=9, reply="Eggs."),
        event("b3", user_id="nobody", reply="Eggs."),
        {"event_id": "b4", "user_id": "alice", "kind": "thumbs", "value": 1},
        event("b5", kind="rating", value=3, reply="Eggs."),
        "not an event",
    ])  # fmt: skip
    assert [r.status for r in results] == ["created", "error", "error", "error", "created", "error"]
    assert [(r.field, r.code) for r in results if r.status == "error"] == [
        ("value", 422), ("user_id", 404), ("reply", 422), ("event", 422)]  # fmt: skip
    assert store.counts()["events"] == 2
    assert store.counts()["users"] == 1  # the unknown user was not created
    # a failed event leaves no reply behind: only the two stored events' replies exist
    assert store.counts()["replies"] == 2


def test_reply_ids_are_content_ids_and_texts_are_deduplicated(store):
    rid = store.add_reply("Q?", "A.", policy="base", segment=2, generation={"temperature": 0.7})
    assert rid == reply_id_for("Q?", "A.")
    assert store.add_reply("Q?", "A.", policy="other") == rid  # found again by content
    assert store.get_reply(rid)["policy"] == "base"
    store.upsert_user("alice")
    by_id = event("y", reply_id=rid, prompt=None, reply=None, kind="rating", value=2)
    store.record_events([event("x", prompt="Q?", reply="A."), by_id])
    assert store.counts()["replies"] == 1
    with pytest.raises(NotFound):
        store.get_reply("r_000")


def test_comments_are_masked_before_storage(store):
    store.upsert_user("alice")
    comment = "Mail me at jane.doe@example.org or call +44 20 7946 0958, see 2024-01-15 notes."
    store.record_events([event("c1", kind="comment", value=None, comment=comment)])
    stored = store.events("comment")[0]["comment"]
    assert "jane.doe" not in stored and "7946" not in stored
    assert stored == "Mail me at [email] or call [phone], see 2024-01-15 notes."
    with store.engine.connect() as conn:  # nothing unmasked anywhere in the table
        raw = conn.exec_driver_sql("SELECT comment FROM feedback_events").scalars().all()
    assert all("example.org" not in text for text in raw)


PII_CASES = [
    ("card 4111 1111 1111 1111, not 4111-1111-1111-1112", "card [card], not 4111-1111-1111-1112"),
    ("IBAN DE89 3704 0044 0532 0130 00 / GB82WEST12345698765432", "IBAN [iban] / [iban]"),
    ("write to josé@bücher.de or 用户@例子.广告", "write to [email] or [email]"),
    ("call (555) 123-4567 ext. 89 or +1 555 123 4567 x12", "call [phone] or [phone]"),
    ("12.50 in 2024, order 12345, 3.14159", "12.50 in 2024, order 12345, 3.14159"),
]


def test_masking_covers_cards_ibans_idn_mail_extensions_and_reason_tags(store):
    from rlhf_persona.feedback.privacy import mask_pii

    assert [mask_pii(text) for text, _ in PII_CASES] == [masked for _, masked in PII_CASES]
    store.upsert_user("alice")
    tags = ["too long", "mail jane@example.org"]
    [result] = store.record_events([event("t1", reason_tags=tags)])
    assert result.status == "created"
    assert store.events()[0]["reason_tags"] == ["too long", "mail [email]"]
    again = store.record_events([event("t1", reason_tags=tags)])[0]  # a retry is still one
    assert again.status == "duplicate"


def test_external_ids_are_stored_only_as_keyed_hashes(store):
    uid = store.upsert_user(external_id="jane@example.org", profile={"age_band": "25-34"})
    assert uid.startswith("u_") and "jane" not in uid
    assert store.upsert_user(external_id="jane@example.org") == uid  # stable pseudonym
    other_key = FeedbackStore(store.url, hash_key="another-key")
    try:
        assert other_key.hasher.pseudonym("jane@example.org") != uid  # the hash is keyed
    finally:
        other_key.close()
    with store.engine.connect() as conn:
        dump = str(conn.exec_driver_sql("SELECT * FROM users").all())
    assert "jane" not in dump
    with pytest.raises(Conflict):
        store.upsert_user("bob", external_id="jane@example.org")


def test_delete_user_removes_feedback_and_tombstone_blocks_return(store):
    store.upsert_user("alice", {"age_band": "18-24"})
    store.upsert_user(external_id="bob-crm-17", profile={"age_band": "65+"})
    bob = store.hasher.pseudonym("bob-crm-17")
    store.record_events([event("a1"), event("b1", user_id=bob, value=-1)])
    # a pair whose chosen reply is the newer one: its current row is keyed by the other reply
    older, newer = (store.add_reply("Tea or coffee?", text) for text in ("Tea.", "Coffee."))
    store.record_events([{"event_id": "b2", "user_id": bob, "kind": "pairwise", "value": 1,
                          "reply_id": newer, "other_reply_id": older}])  # fmt: skip
    store.add_reply("Private question from Bob?", "Answer.", user_id=bob, conversation_id="c9")
    store.write_segments("run1", [("alice", 0, 0.9), (bob, 1, 0.8)])
    assert store.counts()["current"] == 3

    removed = store.delete_user(bob)
    # his private chat, and the pair only he rated; the thumb's reply stays (alice rated it)
    assert removed == {"events": 2, "segment_assignments": 1, "replies": 3}
    assert store.get_reply(store.events()[0]["reply_id"])["reply"] == "Oatmeal with fruit."
    assert store.counts()["current"] == 1  # alice's thumb: bob's current values went too
    assert [u["user_id"] for u in store.users()] == ["alice"]
    assert [e["user_id"] for e in store.events()] == ["alice"]
    assert store.current_segments() == {"alice": 0}
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT user_id, profile, external_id_hash FROM users WHERE deleted_at IS NOT NULL"
            if store.dialect == "sqlite"
            else "SELECT user_id, profile::text, external_id_hash FROM users"
            " WHERE deleted_at IS NOT NULL"
        ).all()
    [(anonymous, profile, ext_hash)] = rows  # the row stays, anonymised
    assert anonymous.startswith("deleted-") and ext_hash is None and "65+" not in str(profile)
    with pytest.raises(Gone):
        store.write_segments("run2", [(bob, 1, 0.5)])

    # the tombstone keeps the user out: by user id, by external id, through record_events
    with pytest.raises(Gone):
        store.upsert_user(external_id="bob-crm-17")
    with pytest.raises(Gone):
        store.get_user(bob)
    again = store.record_events([event("b2", user_id=bob)], create_users=True)[0]
    assert (again.status, again.code) == ("error", 410)
    assert store.is_deleted(external_id="bob-crm-17")
    with pytest.raises(Gone):
        store.delete_user(bob)


def test_deleted_user_leaves_no_trace_in_the_sqlite_files(tmp_path):
    """The raw database and WAL files hold nothing of a deleted user: not the id (an e-mail
    here), the profile, the prompt only they sent, nor their comment (secure_delete zeroes
    the freed cells, the WAL is truncated after the commit)."""
    path = tmp_path / "feedback.db"
    mark = "zq7-unique-4711"
    uid = f"{mark}@example.org"
    with FeedbackStore(path, hash_key="deletion-test-hash-key") as store:
        store.upsert_user("alice")
        store.upsert_user(uid, {"note": f"profile {mark}"})
        store.update_profile(uid, {"note": f"patched {mark}"})
        prompt = f"My secret question {mark}?"
        store.add_reply(prompt, "A chat reply.", user_id=uid, conversation_id=f"c-{mark}")
        store.record_events([
            event("d1", uid, prompt=f"Rated prompt {mark}?", reply=f"Reply {mark}."),
            event("d2", uid, kind="comment", value=None, comment=f"comment {mark}"),
            event("d3", "alice"),
        ])  # fmt: skip
        files = [path, path.with_name(path.name + "-wal")]
        assert mark.encode() in b"".join(f.read_bytes() for f in files if f.exists())
        store.delete_user(uid)
        leftover = {f.name: f.read_bytes().count(mark.encode()) for f in files if f.exists()}
        assert not any(leftover.values()), leftover
        with pytest.raises(NotFound):  # the prompt only this user sent is gone
            store.get_reply(reply_id_for(prompt, "A chat reply."))
        assert [e["event_id"] for e in store.events()] == ["d3"]  # alice's vote stays


def test_segments_latest_assignment_per_user(store):
    for uid in ("a", "b", "c"):
        store.upsert_user(uid)
    store.write_segments("run1", [("a", 0, 0.5), ("b", 1, 0.6), ("c", 1, None)])
    store.write_segments("run2", {"a": 2, "b": 0})
    assert store.current_segments() == {"a": 2, "b": 0, "c": 1}
    assert store.current_segments("run1") == {"a": 0, "b": 1, "c": 1}
    assert store.get_user("a")["segment"] == 2
    with pytest.raises(NotFound):
        store.write_segments("run3", [("ghost", 0, 1.0)])


def test_profiles_and_cursor_pagination(store):
    for i in range(5):
        store.upsert_user(f"u{i}", {"age_band": "18-24", "interests": ["tech", "music"]})
    store.update_profile("u0", {"region": "eu", "age_band": None})
    assert store.get_user("u0")["profile"] == {"interests": ["tech", "music"], "region": "eu"}
    seen, cursor = [], None
    while True:
        page, cursor = store.list_users(limit=2, cursor=cursor)
        seen += [u["user_id"] for u in page]
        if cursor is None:
            break
    assert seen == [f"u{i}" for i in range(5)]


def test_concurrent_writers_store_each_event_once(store):
    """Threads racing the same events (client retries) end with one row per event id."""
    store.upsert_user("alice")
    events = [event(f"t{i}", reply=f"Reply {i}.", value=1 if i % 2 else -1) for i in range(200)]
    errors = []

    def worker():
        try:
            for start in range(0, 200, 50):
                for result in store.record_events(events[start : start + 50]):
                    assert result.status in ("created", "duplicate")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.counts()["events"] == 200 and store.counts()["current"] == 200


def test_each_event_points_at_its_own_replies_after_deletes_and_racing_writers(store):
    """New rows' ids are read back per batch (on SQLite: the rows past the largest id, under
    the write lock). After the newest rows were deleted, and with writers racing in threads,
    every event still points at its own reply and every pairwise one at its own other reply."""
    store.upsert_user("bob")
    store.record_events([event(f"bob{i}", "bob", reply=f"Bob's reply {i}.") for i in range(30)])
    store.delete_user("bob")  # the events and replies with the largest ids go
    store.upsert_user("alice")
    prompt = event("x")["prompt"]
    errors = []

    def worker(w: int) -> None:
        try:
            for start in range(0, 60, 20):
                batch = [
                    event(f"w{w}-{i}", reply=f"W{w} reply {i}.")
                    if i % 3
                    else event(
                        f"w{w}-{i}",
                        kind="pairwise",
                        reply=f"W{w} reply {i}.",
                        other_reply=f"W{w} other {i}.",
                    )  # fmt: skip
                    for i in range(start, start + 20)
                ]
                assert {r.status for r in store.record_events(batch)} == {"created"}
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = store.events(history=True)
    assert len(stored) == 4 * 60
    for ev in stored:
        w, i = ev["event_id"][1:].split("-")
        assert ev["reply_id"] == reply_id_for(prompt, f"W{w} reply {i}.")
        assert store.get_reply(ev["reply_id"])["reply"] == f"W{w} reply {i}."
        if ev["kind"] == "pairwise":
            assert ev["other_reply_id"] == reply_id_for(prompt, f"W{w} other {i}.")


def _take_lock_and_report(lock, times) -> None:
    with lock():
        times.put(time.monotonic())


def test_sqlite_writers_in_other_processes_queue_on_the_write_lock(tmp_path):
    """A writer in another process (here a forked one, holding the parent's lock object)
    waits while this process holds the file's write lock, and goes on once it is released."""
    store = FeedbackStore(tmp_path / "feedback.db")
    ctx = multiprocessing.get_context("fork")
    times = ctx.Queue()
    try:
        with store.transaction() as conn:  # holds the write lock
            conn.execute(sa.text("SELECT 1"))
            child = ctx.Process(target=_take_lock_and_report, args=(store.write_lock, times))
            child.start()
            child.join(1.0)
            assert child.is_alive() and times.empty()  # still waiting for the lock
            released = time.monotonic()
        child.join(30)
        assert child.exitcode == 0 and times.get(timeout=5) >= released
    finally:
        store.close()


def test_write_lock_is_a_no_op_where_there_is_no_file():
    assert WriteLock("sqlite://").path is None
    assert WriteLock("postgresql+psycopg://u@localhost/db").path is None
    with WriteLock("sqlite://")():
        pass


def test_wal_checkpoints_run_off_the_write_path(tmp_path):
    """With the service's checkpointer, commits no longer checkpoint (autocheckpoint 0), the
    thread copies the WAL into the database in the background and restarts it once it is long;
    after it stops, the store's connections checkpoint by themselves again."""
    store = FeedbackStore(tmp_path / "feedback.db")
    checkpointer = WalCheckpointer(store.engine, store.write_lock, 0.05, restart_frames=1)
    try:
        checkpointer.start()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        store.upsert_user("alice")
        store.record_events([event(f"c{i}", reply=f"Reply {i}.") for i in range(50)])
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy, frames, copied = checkpointer.last
        assert busy == 0 and copied == frames  # the whole WAL is in the database
        assert checkpointer.restarts >= 1  # and the WAL started over (under the write lock)
        checkpointer.stop()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() > 0
    finally:
        checkpointer.stop()
        store.close()
    assert not WalCheckpointer(make_engine("sqlite://")).enabled
