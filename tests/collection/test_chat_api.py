"""POST /v1/chat and the token-authenticated chat routes, against a real uvicorn service with
the embedded tiny policy and a persona registry (see conftest.py)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from collection_helpers import HASH_KEY

from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.serving.tokens import mint_token, token_key


@pytest.fixture(scope="module")
def api(chat_service):
    with httpx.Client(base_url=chat_service.base_url, timeout=120) as client:
        client.headers["X-API-Key"] = chat_service.keys["collector"]
        yield client


def _token(api, user_id: str, **body) -> dict[str, str]:
    resp = api.post("/v1/chat/tokens", json={"user_id": user_id, **body})
    assert resp.status_code == 201, resp.text
    return {"Authorization": "Bearer " + resp.json()["token"]}


def _anon(chat_service) -> httpx.Client:
    """A client without the API key (as the browser is)."""
    return httpx.Client(base_url=chat_service.base_url, timeout=120)


def test_chat_routes_users_to_their_segment_policy_and_stores_provenance(api, chat_service):
    ann = api.post("/v1/chat", json={"user_id": "ann", "message": "Any tips for cooking rice?",
                                     "conversation_id": "conv-ann-1"})  # fmt: skip
    bob = api.post("/v1/chat", json={"user_id": "bob", "message": "Any tips for cooking rice?",
                                     "ab": False})  # fmt: skip
    assert ann.status_code == 200 and bob.status_code == 200, (ann.text, bob.text)
    ann, bob = ann.json(), bob.json()
    # ann is in segment 1 (persona route); bob has no segment (global -> base model).
    assert (ann["policy"], ann["segment"], ann["generation"]["persona"]) == (
        "base+persona",
        1,
        True,
    )
    assert (bob["policy"], bob["segment"], bob["generation"]["persona"]) == ("base", None, False)
    # The service's share is 1: A/B unless the request says otherwise.
    assert ann["ab"] and [r["slot"] for r in ann["replies"]] == ["A", "B"]
    assert ann["replies"][0]["text"] != ann["replies"][1]["text"]
    assert not bob["ab"] and len(bob["replies"]) == 1 and bob["replies"][0]["slot"] is None
    with FeedbackStore(chat_service.db, hash_key=HASH_KEY) as store:
        stored = store.get_reply(ann["replies"][1]["reply_id"])
        assert (stored["policy"], stored["segment"]) == ("base+persona", 1)
        assert stored["generation"]["model"] == "embedded:tiny-test"
        assert stored["generation"]["max_new_tokens"] == 20
        assert store.was_shown("ann", ann["replies"][0]["reply_id"])
        assert not store.was_shown("bob", ann["replies"][0]["reply_id"])
        assert store.get_reply(bob["replies"][0]["reply_id"])["policy"] == "base"


def test_chat_input_errors_name_the_field(api, chat_service):
    cases = [
        ({"message": "hi"}, 422, "user_id"),  # API key without a user
        ({"user_id": "nobody", "message": "hi"}, 404, "user_id"),
        ({"user_id": "ann", "message": "   "}, 422, "message"),
        ({"user_id": "ann", "message": "x" * 2001}, 422, "message"),
        ({"user_id": "ann", "message": "hi", "extra": 1}, 422, "extra"),
    ]
    for body, status, field in cases:
        resp = api.post("/v1/chat", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["field"] == field, resp.json()
    with _anon(chat_service) as anon:
        assert anon.post("/v1/chat", json={"user_id": "ann", "message": "hi"}).status_code == 401


def test_tokens_act_only_as_their_user_and_only_on_replies_shown_to_them(api, chat_service):
    ann_h, bob_h = _token(api, "ann"), _token(api, "bob")
    with _anon(chat_service) as anon:
        session = anon.get("/v1/chat/session", headers=ann_h).json()
        assert session["user_id"] == "ann" and "too long" in session["reason_tags"]
        turn = anon.post("/v1/chat", json={"message": "How do I start running?"}, headers=ann_h)
        assert turn.status_code == 200 and turn.json()["user_id"] == "ann"
        a, b = (r["reply_id"] for r in turn.json()["replies"])
        fb = lambda h, **ev: anon.post("/v1/chat/feedback", json=ev, headers=h)  # noqa: E731
        first = fb(ann_h, event_id="tok-1", kind="thumbs", reply_id=a, value=1)
        again = fb(ann_h, event_id="tok-1", kind="thumbs", reply_id=a, value=1)
        change = fb(ann_h, event_id="tok-2", kind="thumbs", reply_id=a, value=-1,
                    reason_tags=["too long"])  # fmt: skip
        pair = fb(ann_h, event_id="tok-3", kind="pairwise", reply_id=a, other_reply_id=b,
                  value=-1)  # fmt: skip
        assert [r.status_code for r in (first, again, change, pair)] == [201, 200, 201, 201]
        assert [r.json()["status"] for r in (first, again, change)] == [
            "created", "duplicate", "updated"]  # fmt: skip
        # bob was not shown ann's replies; a token cannot speak for another user.
        stolen = fb(bob_h, event_id="tok-4", kind="rating", reply_id=a, value=5)
        assert (stolen.status_code, stolen.json()["field"]) == (403, "reply_id")
        other = fb(ann_h, event_id="tok-5", kind="thumbs", reply_id=a, value=1, user_id="bob")
        assert (other.status_code, other.json()["field"]) == (403, "user_id")
        half = fb(bob_h, event_id="tok-6", kind="pairwise", reply_id=a, other_reply_id=b, value=1)
        assert half.status_code == 403
        assert fb(ann_h, event_id="tok-7", kind="rating", reply_id=a).status_code == 422
        # Without a token, forged or expired: 401 (the API key is not enough here).
        assert fb({}, event_id="tok-8", kind="thumbs", reply_id=a, value=1).status_code == 401
        forged = {"Authorization": "Bearer " + mint_token(b"not-the-key", "ann", 60)}
        expired = mint_token(token_key(None, HASH_KEY), "ann", 60, now=time.time() - 3600)
        for headers in (forged, {"Authorization": "Bearer " + expired}):
            resp = fb(headers, event_id="tok-9", kind="thumbs", reply_id=a, value=1)
            assert resp.status_code == 401, resp.text
        assert (
            "expired"
            in anon.get("/v1/chat/session", headers={"Authorization": "Bearer " + expired}).text
        )
    with FeedbackStore(chat_service.db, hash_key=HASH_KEY) as store:
        current = {(e["kind"], e["reply_id"]): e for e in store.events(user_id="ann")}
        assert current[("thumbs", a)]["value"] == -1
        assert current[("thumbs", a)]["reason_tags"] == ["too long"]
        assert current[("pairwise", a)]["other_reply_id"] == b
        assert current[("pairwise", a)]["value"] == -1
        assert not [e for e in store.events(user_id="bob", history=True) if e["reply_id"] == a]


def test_token_minting_needs_a_key_and_a_live_user(api, chat_service):
    with _anon(chat_service) as anon:
        assert anon.post("/v1/chat/tokens", json={"user_id": "ann"}).status_code == 401
    assert api.post("/v1/chat/tokens", json={"user_id": "ghost"}).status_code == 404
    made = api.post("/v1/chat/tokens", json={"user_id": "ann", "ttl_s": 60}).json()
    assert made["url"] == "/chat?token=" + made["token"]
    assert api.post("/v1/chat/tokens", json={"user_id": "ann", "ttl_s": 1}).status_code == 422


def test_generation_is_batched_and_feedback_stays_fast_meanwhile(api, chat_service):
    """Eight concurrent chats share generate calls (the batch size is stored with each reply),
    and a feedback post sent while they are generated is answered before they finish."""

    async def scenario():
        headers = {"X-API-Key": chat_service.keys["collector"]}
        async with httpx.AsyncClient(
            base_url=chat_service.base_url, headers=headers, timeout=120
        ) as client:
            chats = [
                asyncio.create_task(client.post("/v1/chat", json={
                    "user_id": "bob", "message": f"Question number {i} about travel?",
                    "ab": False}))
                for i in range(8)
            ]  # fmt: skip
            await asyncio.sleep(0.05)  # the chats are queued or generating
            latencies, chats_done_at_first_answer = [], None
            for i in range(10):
                start = time.perf_counter()
                resp = await client.post("/v1/feedback", json={
                    "event_id": f"fast-{i}", "user_id": "bob", "kind": "rating", "value": 3,
                    "prompt": "Where to go?", "reply": f"Try place {i}."})  # fmt: skip
                latencies.append(time.perf_counter() - start)
                assert resp.status_code == 201, resp.text
                if chats_done_at_first_answer is None:
                    chats_done_at_first_answer = sum(task.done() for task in chats)
            replies = [(await task).json() for task in chats]
            return latencies, chats_done_at_first_answer, replies

    latencies, done_meanwhile, replies = asyncio.run(scenario())
    assert done_meanwhile < 8, "feedback waited for generation"
    sizes = [r["generation"]["batch_size"] for r in replies]
    assert max(sizes) > 1, sizes  # concurrent requests shared a generate call
    assert sorted(latencies)[-1] < 2.0, latencies  # generous: the machine is shared


def test_one_token_flooding_gets_429_and_others_are_served(api, chat_service):
    """Eight parallel chats of one token: two are served (the per-token cap), six are answered
    429 with Retry-After at once; another user's chat meanwhile is served. Contact details in
    a message reach neither the policy nor the store."""
    for user in ("flood-a", "flood-b"):
        assert api.post("/v1/users", json={"user_id": user}).status_code in (200, 201)
    flooder, other = _token(api, "flood-a"), _token(api, "flood-b")

    async def scenario():
        async with httpx.AsyncClient(base_url=chat_service.base_url, timeout=120) as client:

            def send(headers, i):
                return client.post(
                    "/v1/chat",
                    headers=headers,
                    json={"message": f"Question {i}: mail me at flood{i}@example.org", "ab": False},
                )

            flood = [asyncio.create_task(send(flooder, i)) for i in range(8)]
            await asyncio.sleep(0.05)
            served = await send(other, 99)
            return await asyncio.gather(*flood), served

    flood, served = asyncio.run(scenario())
    codes = sorted(resp.status_code for resp in flood)
    assert codes == [200] * 2 + [429] * 6, codes
    refused = next(resp for resp in flood if resp.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1 and "at once" in refused.json()["detail"]
    assert served.status_code == 200, served.text
    assert served.json()["prompt"] == "Question 99: mail me at [email]"
    with FeedbackStore(chat_service.db, hash_key=HASH_KEY) as store:
        stored = store.get_reply(served.json()["replies"][0]["reply_id"])
    assert "example.org" not in stored["prompt"]
