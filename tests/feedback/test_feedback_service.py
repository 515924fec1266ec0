"""The HTTP API under a real uvicorn process on loopback, against a real SQLite file."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from feedback_helpers import HASH_KEY, event

from rlhf_persona.api.testing import ServiceProcess
from rlhf_persona.feedback.store import FeedbackStore

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    db = tmp_path_factory.mktemp("service") / "feedback.db"
    with FeedbackStore(db, hash_key=HASH_KEY) as store:
        keys = {role: store.create_api_key(role) for role in ("collector", "reader", "admin")}
    env = {"RLHF_PERSONA_HASH_KEY": HASH_KEY, "RLHF_PERSONA_MAX_BODY_BYTES": str(MAX_BODY),
           "RLHF_PERSONA_MAX_BATCH_EVENTS": "100"}  # fmt: skip
    with ServiceProcess(f"sqlite:///{db}", env=env) as proc:
        proc.keys = keys
        proc.db = db
        yield proc
    assert "Traceback" not in proc.log(), proc.log()  # no unhandled error during the tests


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service.base_url, timeout=30) as c:
        c.headers["X-API-Key"] = service.keys["collector"]
        yield c


@pytest.fixture(scope="module")
def reader(service):
    """A client with a reader key (reading profiles and feedback is not the collector's)."""
    with httpx.Client(base_url=service.base_url, timeout=30) as c:
        c.headers["X-API-Key"] = service.keys["reader"]
        yield c


@pytest.fixture(scope="module")
def admin_headers(service):
    return {"X-API-Key": service.keys["admin"]}


def _user(client, user_id, **profile):
    resp = client.post("/v1/users", json={"user_id": user_id, "profile": profile})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def test_users_create_read_update_list(client, reader):
    created = client.post("/v1/users", json={"user_id": "svc-u1", "profile": {"age_band": "25-34"}})
    assert created.status_code == 201
    assert client.post("/v1/users", json={"user_id": "svc-u1"}).status_code == 200
    patched = client.patch("/v1/users/svc-u1", json={"profile": {"region": "eu"}})
    assert patched.json()["profile"] == {"region": "eu"}  # a collector sees what it sent
    merged = reader.get("/v1/users/svc-u1").json()["profile"]
    assert merged == {"age_band": "25-34", "region": "eu"}
    by_ext = client.post("/v1/users", json={"external_id": "crm-42", "profile": {}})
    assert by_ext.status_code == 201 and by_ext.json()["user_id"].startswith("u_")
    for i in range(3):
        _user(client, f"svc-page-{i}")
    ids, cursor = [], None
    while True:
        page = reader.get(
            "/v1/users", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        )
        assert page.status_code == 200
        ids += [u["user_id"] for u in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert {"svc-u1", "svc-page-0", "svc-page-2"} <= set(ids) and len(ids) == len(set(ids))


def test_feedback_idempotency_vote_change_and_db_rows(client, reader, service):
    _user(client, "svc-voter")
    first = client.post("/v1/feedback", json=event("svc-e1", user_id="svc-voter"))
    retry = client.post("/v1/feedback", json=event("svc-e1", user_id="svc-voter"))
    change = client.post("/v1/feedback", json=event("svc-e2", user_id="svc-voter", value=-1))
    assert (first.status_code, first.json()["status"]) == (201, "created")
    assert (retry.status_code, retry.json()["status"]) == (200, "duplicate")
    assert retry.json()["reply_id"] == first.json()["reply_id"]
    assert (change.status_code, change.json()["status"]) == (201, "updated")
    listed = reader.get("/v1/feedback", params={"user_id": "svc-voter"}).json()["items"]
    assert [(e["event_id"], e["value"]) for e in listed] == [("svc-e2", -1)]
    history = reader.get("/v1/feedback", params={"user_id": "svc-voter", "history": True})
    assert [e["event_id"] for e in history.json()["items"]] == ["svc-e1", "svc-e2"]
    with FeedbackStore(service.db, hash_key=HASH_KEY) as store:  # the rows in the database
        rows = store.events(user_id="svc-voter", history=True)
    assert [(e["event_id"], e["value"]) for e in rows] == [("svc-e1", 1), ("svc-e2", -1)]


def test_batch_gives_one_result_per_event(client):
    _user(client, "svc-batch")
    reply = client.post("/v1/replies", json={"prompt": "Q?", "reply": "A.", "policy": "base",
                                             "user_id": "svc-batch"})  # fmt: skip
    assert reply.status_code == 201
    rid = reply.json()["reply_id"]
    events = [
        event("svc-b1", user_id="svc-batch"),
        {"event_id": "svc-b2", "user_id": "svc-batch", "kind": "rating", "reply_id": rid,
         "value": 4},
        event("svc-b3", user_id="svc-batch", kind="rating", value=11),
        event("svc-b4", user_id="svc-nobody"),
        event("svc-b1", user_id="svc-batch"),
    ]  # fmt: skip
    resp = client.post("/v1/feedback/batch", json={"events": events})
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["status"] for r in results] == ["created", "created", "error", "error", "duplicate"]
    assert (results[2]["field"], results[2]["code"]) == ("value", 422)
    assert (results[3]["field"], results[3]["code"]) == ("user_id", 404)
    assert resp.json()["counts"] == {"created": 2, "error": 2, "duplicate": 1}


def _error(resp, status, field=None, words=()):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert body["field"] == field, body
    for word in words:
        assert word in body["detail"], body
    return body


def test_401_without_or_with_a_wrong_key(service):
    url = service.base_url + "/v1/users/x"
    _error(httpx.get(url), 401, words=["X-API-Key"])
    _error(httpx.get(url, headers={"X-API-Key": "rp_wrong"}), 401, words=["invalid"])


def test_read_and_write_are_separate_roles(client, reader, admin_headers):
    """A collector key writes but cannot read what others sent (profiles, comments, prompts);
    a reader key reads but cannot write; admin does both."""
    _user(client, "svc-scope", age_band="25-34", city="Lyon")
    comment = event("svc-scope-c", user_id="svc-scope", kind="comment", value=None,
                    comment="private words")  # fmt: skip
    assert client.post("/v1/feedback", json=comment).status_code == 201
    rid = client.post("/v1/replies", json={"prompt": "Q?", "reply": "A."}).json()["reply_id"]
    for path in ("/v1/users/svc-scope", "/v1/users", "/v1/feedback", f"/v1/replies/{rid}"):
        _error(client.get(path), 403, words=["reader"])
        assert reader.get(path).status_code == 200
        assert httpx.get(reader.base_url.join(path), headers=admin_headers).status_code == 200
    again = client.post("/v1/users", json={"user_id": "svc-scope", "consent": False})
    assert again.status_code == 200 and again.json()["profile"] == {}  # not a way to read
    patched = client.patch("/v1/users/svc-scope", json={"profile": {"city": "Nice"}})
    assert patched.json()["profile"] == {"city": "Nice"}
    stored = reader.get("/v1/users/svc-scope").json()
    assert stored["profile"] == {"age_band": "25-34", "city": "Nice"} and not stored["consent"]
    _error(reader.post("/v1/feedback", json=event("svc-scope-2", user_id="svc-scope")), 403,
           words=["collector"])  # fmt: skip
    _error(reader.post("/v1/users", json={"user_id": "svc-scope-3"}), 403, words=["collector"])


def test_403_collector_may_not_delete_or_export(client, admin_headers):
    _user(client, "svc-del")
    _error(client.delete("/v1/users/svc-del"), 403, words=["admin"])
    _error(client.get("/v1/export/preference"), 403, words=["admin"])
    assert client.get("/v1/export/preference", headers=admin_headers).status_code == 200


def test_404_unknown_ids(client, reader):
    _error(reader.get("/v1/users/svc-ghost"), 404, "user_id", ["svc-ghost"])
    _error(reader.get("/v1/replies/r_ghost"), 404, "reply_id")
    _user(client, "svc-404")
    by_id = {"event_id": "svc-404a", "user_id": "svc-404", "kind": "thumbs",
             "reply_id": "r_ghost", "value": 1}  # fmt: skip
    _error(client.post("/v1/feedback", json=by_id), 404, "reply_id")
    _error(client.post("/v1/feedback", json=event("svc-404b", user_id="svc-ghost")), 404, "user_id")


def test_410_deleted_user_and_409_reused_event_id(client, reader, admin_headers):
    _user(client, "svc-gone")
    assert client.post("/v1/feedback", json=event("svc-g1", user_id="svc-gone")).status_code == 201
    _error(client.post("/v1/feedback", json=event("svc-g1", user_id="svc-gone", value=-1)), 409,
           "event_id")  # fmt: skip
    deleted = client.delete("/v1/users/svc-gone", headers=admin_headers)
    assert deleted.status_code == 200 and deleted.json()["removed"]["events"] == 1
    _error(reader.get("/v1/users/svc-gone"), 410, "user_id")
    _error(client.post("/v1/users", json={"user_id": "svc-gone"}), 410, "user_id")


def test_413_oversized_bodies(client):
    big = {"events": [event("svc-big", comment="x" * 4000)] * 40}
    _error(client.post("/v1/feedback/batch", json=big), 413, words=["limit"])

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(20):
            yield b"x" * 8192

    _error(client.post("/v1/feedback/batch", content=chunks(),
                       headers={"Content-Type": "application/json"}), 413)  # fmt: skip


def test_422_names_the_field(client, reader):
    _user(client, "svc-422")
    _error(client.post("/v1/feedback", json=event("svc-v", user_id="svc-422", value=3)), 422,
           "value")  # fmt: skip
    _error(client.post("/v1/feedback", json=event("svc-k", user_id="svc-422", kind="stars")), 422,
           "kind")  # fmt: skip
    no_reply = {"event_id": "svc-r", "user_id": "svc-422", "kind": "thumbs", "value": 1}
    _error(client.post("/v1/feedback", json=no_reply), 422, "reply")
    pair = event("svc-p", user_id="svc-422", kind="pairwise")
    _error(client.post("/v1/feedback", json=pair), 422, "other_reply")
    _error(client.post("/v1/users", json={"user_id": "bad id!"}), 422, "user_id")
    _error(client.post("/v1/users", json={"profile": {"n": "a\x00b"}}), 422, "profile")
    _error(client.post("/v1/feedback", content=b"{not json",
                       headers={"Content-Type": "application/json"}), 422, "body")  # fmt: skip
    _error(client.post("/v1/feedback/batch", content=b'{"events": [',
                       headers={"Content-Type": "application/json"}), 422, "body")  # fmt: skip
    _error(client.post("/v1/feedback/batch", json={"events": 3}), 422, "events")
    too_many = {"events": [event(f"svc-m{i}", user_id="svc-422") for i in range(101)]}
    _error(client.post("/v1/feedback/batch", json=too_many), 422, "events")
    _error(reader.get("/v1/users", params={"limit": 0}), 422, "limit")
    _error(reader.get("/v1/users", params={"cursor": "garbage"}), 422, "cursor")


NASTY_BODIES = [
    b"", b"null", b"[]", b'"x"', b"{}", b"1e999", b'{"event_id": NaN}',
    b'{"event_id":"n1","user_id":"svc-nasty","kind":"thumbs","prompt":"\\ud800","reply":"r",'
    b'"value":1}',
    b'{"event_id":"n2","user_id":"svc-nasty","kind":"rating","prompt":"p","reply":"r",'
    b'"value":99999999999999999999999}',
    b'{"event_id":"n3","user_id":"svc-nasty","kind":"thumbs","prompt":"p","reply":"r",'
    b'"value":1,"created_at":"not a date"}',
    b'{"event_id":"n4","user_id":"svc-nasty","kind":"thumbs","prompt":"p","reply":"r",'
    b'"value":true,"reason_tags":[[[]]]}',
    b'{"event_id":"n5","user_id":"svc-nasty","kind":"thumbs","prompt":"p","reply":"r",'
    b'"value":1,"created_at":"9999-12-31T23:59:59-05:00"}',
    b'{"events":[{"a":' * 50 + b"1" + b"}]}" * 50,
]  # fmt: skip


def test_no_input_gives_a_500(client):
    _user(client, "svc-nasty")
    for body in NASTY_BODIES:
        for path in ("/v1/feedback", "/v1/feedback/batch", "/v1/users", "/v1/replies"):
            resp = client.post(path, content=body, headers={"Content-Type": "application/json"})
            assert resp.status_code < 500, (path, body, resp.text)
            assert resp.headers["content-type"].startswith("application/json")
    for path in ("/v1/users/%00", "/v1/users/" + "x" * 300, "/v1/feedback?kind=x&limit=-1"):
        assert client.get(path).status_code < 500


def test_concurrent_single_posts_are_all_stored(client, service):
    _user(client, "svc-conc")

    async def post_all():
        async with httpx.AsyncClient(base_url=service.base_url, headers=client.headers) as ac:
            return await asyncio.gather(*(
                ac.post("/v1/feedback", json=event(f"svc-c{i}", user_id="svc-conc",
                                                    reply=f"Reply {i}."))
                for i in range(64)))  # fmt: skip

    codes = [r.status_code for r in asyncio.run(post_all())]
    assert codes == [201] * 64
    with FeedbackStore(service.db, hash_key=HASH_KEY) as store:
        assert len(store.events(user_id="svc-conc")) == 64


def test_openapi_docs(service):
    """The docs pages may run only the scripts they name and their own inline script (by hash),
    and fetch only from the service."""
    import base64
    import hashlib
    import re

    for path in ("/docs", "/redoc"):
        page = httpx.get(service.base_url + path)
        assert page.status_code == 200
        policy = dict(part.split(" ", 1) for part in
                      page.headers["content-security-policy"].split("; "))  # fmt: skip
        assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
        assert "'unsafe-inline'" not in policy["script-src"] and "*" not in policy["script-src"]
        for src in re.findall(r'<script src="([^"]+)"', page.text):
            assert src in policy["script-src"].split()
        for inline in re.findall(r"<script>(.*?)</script>", page.text, re.S):
            digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in policy["script-src"]
    spec = httpx.get(service.base_url + "/openapi.json").json()
    assert {"/v1/feedback", "/v1/feedback/batch", "/v1/users/{user_id}"} <= set(spec["paths"])
    batch = spec["paths"]["/v1/feedback/batch"]["post"]["requestBody"]["content"]
    assert batch["application/json"]["schema"]["properties"]["events"]["items"]["$ref"].endswith(
        "FeedbackEventIn"
    )
    assert "FeedbackEventIn" in spec["components"]["schemas"]


def test_served_worker_collects_cycles_less_often(tmp_path, monkeypatch):
    """The factory uvicorn runs in each worker freezes the start-up objects and raises the
    gen-0 threshold (the cycle collector was a tenth of the batch path's CPU)."""
    import gc

    from rlhf_persona.api.app import GC_THRESHOLDS, app_from_env

    monkeypatch.setenv("RLHF_PERSONA_DATABASE_URL", f"sqlite:///{tmp_path / 'f.db'}")
    monkeypatch.setenv("RLHF_PERSONA_HASH_KEY", HASH_KEY)
    before = gc.get_threshold()
    try:
        assert app_from_env().routes  # the app is built as usual
        assert gc.get_threshold() == GC_THRESHOLDS != before
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_writer_parses_on_its_thread_and_answers_a_bad_batch_alone(sqlite_store):
    """A batch handed over as a parse function is parsed on the writer's thread (off the event
    loop, before the write lock); its error reaches its own request, and the batch committed
    with it is stored."""
    import threading

    from rlhf_persona.api.writer import BatchingWriter

    sqlite_store.upsert_user("alice")
    writer = BatchingWriter(sqlite_store)
    parsed_on = []

    def good():
        parsed_on.append(threading.current_thread().name)
        return [event("w1")]

    def bad():
        raise ValueError("events: not a list")

    async def both():
        return await asyncio.gather(writer.submit(good), writer.submit(bad),
                                    return_exceptions=True)  # fmt: skip

    writer.start()
    try:
        ok, failed = asyncio.run(both())
    finally:
        writer.stop()
    assert parsed_on == ["feedback-writer"]
    assert [r.status for r in ok] == ["created"]
    assert isinstance(failed, ValueError) and "not a list" in str(failed)
    assert sqlite_store.counts()["events"] == 1


def test_reused_event_id_with_other_content_is_409_within_a_batch_and_a_group_commit(
    client, service
):
    """The same id twice in one batch, or in concurrent posts that share one group commit:
    the same content is a duplicate, different content a 409 (never silently dropped)."""
    _user(client, "svc-reuse")
    batch = [event("svc-ru1", user_id="svc-reuse"), event("svc-ru1", user_id="svc-reuse"),
             event("svc-ru1", user_id="svc-reuse", value=-1)]  # fmt: skip
    results = client.post("/v1/feedback/batch", json={"events": batch}).json()["results"]
    assert [(r["status"], r["code"]) for r in results] == [
        ("created", None), ("duplicate", None), ("error", 409)]  # fmt: skip
    assert results[2]["field"] == "event_id"

    async def post_all():
        async with httpx.AsyncClient(base_url=service.base_url, headers=client.headers) as ac:
            return await asyncio.gather(*(
                ac.post("/v1/feedback", json=event("svc-ru2", user_id="svc-reuse",
                                                    reply=f"Reply {i}."))
                for i in range(16)))  # fmt: skip

    codes = sorted(r.status_code for r in asyncio.run(post_all()))
    assert codes == [201] + [409] * 15, codes
    with FeedbackStore(service.db, hash_key=HASH_KEY) as store:
        assert len(store.events(user_id="svc-reuse", history=True)) == 2


def test_cursors_out_of_range_are_422_not_500(reader):
    import base64

    def cursor(n: int) -> str:
        return base64.urlsafe_b64encode(f"v1:{n}".encode()).decode().rstrip("=")

    for path in ("/v1/feedback", "/v1/users"):
        for n in (2**63, 2**64 + 5, 10**30):
            _error(reader.get(path, params={"cursor": cursor(n)}), 422, "cursor")
        last = reader.get(path, params={"cursor": cursor(2**63 - 1)})
        assert last.status_code == 200 and last.json()["items"] == [], last.text


def test_chat_tokens_have_a_maximum_lifetime_and_die_with_their_user(client, service,
                                                                    admin_headers):  # fmt: skip
    """No chat model is needed: tokens and the session route work without one."""
    from rlhf_persona.serving.tokens import MAX_TTL_S, mint_token, token_key

    _user(client, "svc-tok")
    key = token_key(None, HASH_KEY)
    ten_years = mint_token(key, "svc-tok", 60, now=time.time() + 10 * 365 * 86400)
    resp = httpx.get(service.base_url + "/v1/chat/session",
                     headers={"Authorization": "Bearer " + ten_years})  # fmt: skip
    _error(resp, 401, words=["maximum lifetime"])
    with pytest.raises(ValueError):
        mint_token(key, "svc-tok", MAX_TTL_S + 1)
    minted = client.post("/v1/chat/tokens", json={"user_id": "svc-tok"})
    assert minted.status_code == 201, minted.text
    bearer = {"Authorization": "Bearer " + minted.json()["token"]}
    assert httpx.get(service.base_url + "/v1/chat/session", headers=bearer).status_code == 200
    assert client.delete("/v1/users/svc-tok", headers=admin_headers).status_code == 200
    fb = {"event_id": "svc-tok-1", "kind": "thumbs", "reply_id": "r_x", "value": 1}
    for method, path, body in [("GET", "/v1/chat/session", None),
                               ("POST", "/v1/chat/feedback", fb),
                               ("POST", "/v1/chat", {"message": "hello"})]:  # fmt: skip
        resp = httpx.request(method, service.base_url + path, json=body, headers=bearer)
        _error(resp, 401, words=["no longer exists"])


def test_deleting_a_user_over_http_leaves_nothing_in_the_raw_files(client, reader, service,
                                                                   admin_headers):  # fmt: skip
    mark = "qx9-http-unique-2718"
    uid = f"{mark}@example.org"
    _user(client, uid, note=f"profile {mark}")
    reply = client.post("/v1/replies", json={"prompt": f"Only I asked {mark}?", "reply": "Yes.",
                                             "user_id": uid})  # fmt: skip
    assert reply.status_code == 201
    rated = event("svc-http-del", user_id=uid, prompt=f"Prompt {mark}?", reply=f"Reply {mark}.")
    assert client.post("/v1/feedback", json=rated).status_code == 201
    assert client.delete(f"/v1/users/{uid}", headers=admin_headers).status_code == 200
    _error(reader.get(f"/v1/replies/{reply.json()['reply_id']}"), 404, "reply_id")
    files = [service.db, service.db.with_name(service.db.name + "-wal")]
    leftover = {f.name: f.read_bytes().count(mark.encode()) for f in files if f.exists()}
    assert not any(leftover.values()), leftover


def test_serve_refuses_the_development_key_unless_dev_on_loopback(tmp_path, monkeypatch):
    import os
    import socket
    import subprocess
    import sys

    from rlhf_persona.api.app import app_from_env
    from rlhf_persona.api.startup import check_secrets
    from rlhf_persona.errors import UserError

    cases = [
        (None, None, False, "RLHF_PERSONA_HASH_KEY is not set"),
        ("rlhf-persona-dev-key", None, False, "public development key"),
        ("short", None, False, "shorter than 16"),
        (HASH_KEY, "x", False, "RLHF_PERSONA_CHAT_TOKEN_SECRET is shorter"),
        (None, None, True, "loopback"),  # --dev on 0.0.0.0
    ]
    for hash_key, secret, dev, message in cases:
        with pytest.raises(UserError, match=message):
            check_secrets(hash_key, secret, dev, "0.0.0.0")
    check_secrets(None, None, True, "::1")  # --dev on loopback
    check_secrets(HASH_KEY, None, False, "0.0.0.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_PERSONA_")}
    for name in [k for k in os.environ if k.startswith("RLHF_PERSONA_")]:
        monkeypatch.delenv(name)
    with pytest.raises(UserError, match="HASH_KEY is not set"):  # each worker checks too
        app_from_env()
    # From the shell: one error line, before the store is touched; a taken port is named.
    cmd = [sys.executable, "-m", "rlhf_persona.api", "--db", str(tmp_path / "f.db")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "HASH_KEY is not set" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "f.db").exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        keyed = {**env, "RLHF_PERSONA_HASH_KEY": HASH_KEY}
        proc = subprocess.run([*cmd, "--port", port], env=keyed, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    assert proc.returncode == 2 and f"--port {port}: already in use" in proc.stderr, proc.stderr


def test_profiles_are_bounded_and_types_are_strict(client, reader):
    _user(client, "svc-big-profile")
    _error(client.patch("/v1/users/svc-big-profile", json={"profile": {"note": "x" * 1001}}),
           422, "profile.note", ["1000 characters"])  # fmt: skip
    answers = [client.patch("/v1/users/svc-big-profile", json={"profile": {f"k{i}": "x" * 900}})
               for i in range(20)]  # fmt: skip
    codes = [resp.status_code for resp in answers]
    assert codes[:18] == [200] * 18 and set(codes[18:]) == {422}, codes  # 16 KiB in all
    _error(answers[-1], 422, "profile", ["bytes"])
    assert len(reader.get("/v1/users/svc-big-profile").json()["profile"]) == 18
    for body in ({"consent": "yes"}, {"consent": 1}):
        _error(client.patch("/v1/users/svc-big-profile", json=body), 422, "consent")
    _error(client.post("/v1/users", json={"user_id": "svc-strict", "consent": "true"}), 422,
           "consent")  # fmt: skip
    _error(client.post("/v1/chat", json={"user_id": "svc-big-profile", "message": "hi",
                                         "ab": "yes"}), 422, "ab")  # fmt: skip
    _error(client.post("/v1/chat/tokens", json={"user_id": "svc-big-profile", "ttl_s": "600"}),
           422, "ttl_s")  # fmt: skip
