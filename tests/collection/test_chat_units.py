"""The parts of live collection that need no service: tokens, the micro-batcher, the reason-tag
vocabulary, and the commands' input errors."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from typer.testing import CliRunner

from rlhf_persona.cli import app
from rlhf_persona.errors import UserError
from rlhf_persona.feedback.store import FeedbackStore
from rlhf_persona.serving.batcher import MicroBatcher
from rlhf_persona.serving.commands import chat_env
from rlhf_persona.serving.policy import REASON_TAGS
from rlhf_persona.serving.tokens import TokenError, mint_token, token_key, verify_token


def test_tokens_carry_their_user_and_expire():
    key = token_key("secret")
    token = mint_token(key, "user.with:odd@chars", 60, now=1_000_000)
    found = verify_token(key, token, now=1_000_030)
    assert (found.user_id, found.expires_at) == ("user.with:odd@chars", 1_000_060)
    with pytest.raises(TokenError, match="expired"):
        verify_token(key, token, now=1_000_061)
    with pytest.raises(TokenError, match="invalid"):
        verify_token(token_key("other"), token, now=1_000_030)
    version, payload, signature = token.split(".")
    forged_payload = mint_token(key, "admin", 60, now=1_000_000).split(".")[1]
    with pytest.raises(TokenError, match="invalid"):  # another user's payload, old signature
        verify_token(key, f"{version}.{forged_payload}.{signature}", now=1_000_030)
    for bad in ("", "v1.x", "v2.a.b", "v1..", "x" * 2000):
        with pytest.raises(TokenError):
            verify_token(key, bad)
    # Without a secret the key derives from the hash key: the service and the CLI agree.
    assert token_key(None, "k1") == token_key(None, "k1") != token_key(None, "k2")


def test_micro_batcher_groups_concurrent_requests_off_the_event_loop():
    calls: list[list[int]] = []
    loop_thread: list[int] = []

    def double(items: list[int]) -> list[int]:
        assert threading.get_ident() != loop_thread[0]  # never on the event loop's thread
        calls.append(items)
        time.sleep(0.05)  # a "generation" that would block the loop
        return [2 * i for i in items]

    async def scenario():
        loop_thread.append(threading.get_ident())
        batcher = MicroBatcher(double, max_batch=4, window_s=0.02)
        batcher.start()
        ticks = 0

        async def ticker():  # the loop stays responsive while batches run
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        pair = await batcher.submit_many([20, 21])
        tick.cancel()
        await batcher.stop()
        return results, pair, ticks

    results, pair, ticks = asyncio.run(scenario())
    assert results == [2 * i for i in range(10)] and pair == [40, 42]
    assert [len(c) for c in calls[:3]] == [4, 4, 2]  # 10 concurrent requests, max_batch 4
    assert ticks >= 10  # ~0.2 s of batches; the loop kept ticking meanwhile


def test_micro_batcher_gives_every_waiter_the_batch_error():
    def fail(items):
        raise RuntimeError("model exploded")

    async def scenario():
        batcher = MicroBatcher(fail, max_batch=8, window_s=0.01)
        batcher.start()
        out = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        await batcher.stop()
        return out

    assert [str(e) for e in asyncio.run(scenario())] == ["model exploded"] * 3


def test_micro_batcher_serves_users_round_robin():
    """One user's eight queued requests do not hold back two other users' single ones: every
    batch takes each waiting user in turn (first come, first served within a user)."""
    calls: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        calls.append(items)
        time.sleep(0.01)
        return items

    async def scenario():
        batcher = MicroBatcher(run, max_batch=3, window_s=0.01, key=lambda item: item[0])
        batcher.start()
        flood = [batcher.submit(f"a{i}") for i in range(8)]
        out = await asyncio.gather(*flood, batcher.submit("b0"), batcher.submit("c0"))
        await batcher.stop()
        return out

    out = asyncio.run(scenario())
    assert out == [f"a{i}" for i in range(8)] + ["b0", "c0"]
    assert calls[0] == ["a0", "b0", "c0"]  # FIFO would have been a0, a1, a2
    assert [item for batch in calls for item in batch if item[0] == "a"] == [
        f"a{i}" for i in range(8)]  # fmt: skip


def test_chat_limiter_per_token_inflight_rate_and_global_cap():
    from rlhf_persona.serving.limits import ChatLimiter, RateLimited

    now = [0.0]
    limiter = ChatLimiter(max_inflight=4, token_max_inflight=2, token_rate_per_min=6,
                          token_burst=3, clock=lambda: now[0])  # fmt: skip
    with limiter.admit("ann"), limiter.admit("ann"):
        with pytest.raises(RateLimited, match="at once") as busy:
            limiter.admit("ann").__enter__()
        assert busy.value.retry_after_s == 1
        # others still get through, up to the global cap of 4 in progress
        with limiter.admit("bob"), limiter.admit(None), pytest.raises(RateLimited, match="busy"):
            limiter.admit("carl").__enter__()
    with limiter.admit("ann"):  # the third of ann's burst of 3
        pass
    with pytest.raises(RateLimited, match="per minute") as rate:
        limiter.admit("ann").__enter__()
    assert rate.value.retry_after_s == 10  # 6 per minute: one every 10 s
    now[0] += 10
    with limiter.admit("ann"):
        pass
    assert limiter.inflight == 0


def test_tokens_have_a_maximum_lifetime():
    from rlhf_persona.serving.tokens import MAX_TTL_S

    key = token_key("secret-of-16-chars")
    with pytest.raises(ValueError, match="ttl_s"):
        mint_token(key, "ann", MAX_TTL_S + 1)
    far = mint_token(key, "ann", MAX_TTL_S, now=1_000_000 + 10 * 365 * 86400)
    with pytest.raises(TokenError, match="maximum lifetime"):
        verify_token(key, far, now=1_000_000)


def test_page_reason_tags_are_the_simulated_users_vocabulary():
    from rlhf_persona.simulation.user import REASON_TAGS as SIMULATED

    vocabulary = {tag for pair in SIMULATED.values() for tag in pair if tag}
    assert set(REASON_TAGS) == vocabulary and len(REASON_TAGS) == len(vocabulary)


def test_serve_chat_options_become_settings_and_a_bad_registry_is_refused(tmp_path):
    env = chat_env("embedded:tiny-test", None, 0.5, True)
    assert env == {
        "RLHF_PERSONA_CHAT_POLICY": "embedded:tiny-test",
        "RLHF_PERSONA_CHAT_AB_SHARE": "0.5",
        "RLHF_PERSONA_CHAT_PRELOAD": "True",
    }
    with pytest.raises(UserError, match="manifest.json"):
        chat_env(None, tmp_path, None, False)


def test_commands_name_bad_input(tmp_path):
    runner = CliRunner()
    db = tmp_path / "f.db"
    result = runner.invoke(app, ["chat-link", "ghost", "--db", str(db)])
    assert "no feedback database" in str(result.exception)  # a missing file is not created
    FeedbackStore(db).close()  # an existing store without that user
    result = runner.invoke(app, ["chat-link", "ghost", "--db", str(db)])
    assert isinstance(result.exception, UserError) and "ghost" in str(result.exception)
    result = runner.invoke(app, ["simulate-traffic", "--url", "localhost:8000"])
    assert isinstance(result.exception, UserError) and "--url" in str(result.exception)
    result = runner.invoke(app, ["serve", "--policy-registry", str(tmp_path), "--db", str(db)])
    assert isinstance(result.exception, UserError) and "--policy-registry" in str(result.exception)


def test_put_replies_stores_a_batch_in_one_go_and_refuses_it_whole(tmp_path):
    from rlhf_persona.feedback.errors import NotFound
    from rlhf_persona.feedback.store import FeedbackStore

    with FeedbackStore(tmp_path / "f.db") as store:
        store.upsert_users([{"user_id": "u1"}, {"user_id": "u2"}])
        rows = [dict(prompt="Q?", reply=text, policy="base", segment=2, user_id=user,
                     generation={"seed": 1}, conversation_id=f"c-{user}")
                for text, user in (("A", "u1"), ("B", "u1"), ("A", "u2"))]  # fmt: skip
        out = store.put_replies(rows)
        assert [r["reply_id"] for r in out] == [store.put_reply(r)["reply_id"] for r in rows]
        assert out[0]["reply_id"] == out[2]["reply_id"]  # same prompt + text: one reply
        assert (out[1]["policy"], out[1]["segment"], out[1]["generation"]) == (
            "base",
            2,
            {"seed": 1},
        )
        assert store.was_shown("u2", out[2]["reply_id"]) and not store.was_shown(
            "u2", out[1]["reply_id"]
        )
        before = store.counts()["replies"]
        with pytest.raises(NotFound, match="ghost"):
            store.put_replies([dict(prompt="Q2?", reply="C", user_id="u1"),
                               dict(prompt="Q2?", reply="D", user_id="ghost")])  # fmt: skip
        assert store.counts()["replies"] == before  # nothing of the refused batch was kept


def test_chat_answers_503_when_the_policy_cannot_load_and_feedback_still_works(tmp_path):
    from fastapi.testclient import TestClient

    from rlhf_persona.api import ServiceSettings, create_app
    from rlhf_persona.feedback.store import FeedbackStore
    from rlhf_persona.serving.settings import ChatSettings

    with FeedbackStore(tmp_path / "f.db") as store:
        key = store.create_api_key("collector")
        store.upsert_user("ann")
    app = create_app(ServiceSettings(database_url=str(tmp_path / "f.db")))
    app.state.chat_settings = ChatSettings(  # in-process generation, a policy that is not there
        policy=str(tmp_path / "no-such-model"), separate_process=False
    )
    with TestClient(app, headers={"X-API-Key": key}) as client:
        resp = client.post("/v1/chat", json={"user_id": "ann", "message": "hi"})
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
        assert "not available" in resp.json()["detail"] and "no-such-model" in resp.text
        event = {"event_id": "e1", "user_id": "ann", "kind": "rating", "value": 4,
                 "prompt": "Q?", "reply": "A."}  # fmt: skip
        assert client.post("/v1/feedback", json=event).status_code == 201
