"""The chat page in a real headless Chromium (Debian's, driven by Playwright): send a message,
rate the replies with a thumb (then change it), stars, a reason tag and an A/B choice, and
find exactly that in the database. Saves test-artifacts/chat_after_rating.png."""

from __future__ import annotations

from pathlib import Path

import httpx
from collection_helpers import HASH_KEY

from rlhf_persona.feedback.store import FeedbackStore

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _link(chat_service, user_id: str) -> str:
    resp = httpx.post(f"{chat_service.base_url}/v1/chat/tokens", json={"user_id": user_id},
                      headers={"X-API-Key": chat_service.keys["collector"]})  # fmt: skip
    assert resp.status_code == 201, resp.text
    return chat_service.base_url + resp.json()["url"]


def _wait_saved(locator, state: str) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_attribute("data-state", state, timeout=30_000)


def test_chat_page_rates_replies_into_the_database(browser, chat_service):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1000, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.goto(_link(chat_service, "ann"))
    expect(page.get_by_test_id("who")).to_have_text("signed in as ann")
    assert "token=" not in page.url  # taken out of the address bar

    page.get_by_test_id("message").fill("How do I get started with cooking?")
    page.get_by_test_id("send").click()
    cards = page.get_by_test_id("reply")
    expect(cards).to_have_count(2, timeout=90_000)  # the service's A/B share is 1
    a, b = cards.nth(0), cards.nth(1)
    a_id, b_id = a.get_attribute("data-reply-id"), b.get_attribute("data-reply-id")

    a.get_by_test_id("thumb-down").click()
    _wait_saved(a.get_by_test_id("status"), "created")
    a.get_by_test_id("thumb-up").click()  # a changed vote updates it
    _wait_saved(a.get_by_test_id("status"), "updated")
    a.locator("summary").click()
    a.get_by_label("too long").check()  # the reason goes out with the latest vote
    _wait_saved(a.get_by_test_id("status"), "updated")
    b.get_by_test_id("star-4").click()
    _wait_saved(b.get_by_test_id("status"), "created")
    page.get_by_test_id("choose-B").click()
    _wait_saved(page.get_by_test_id("choice-status"), "created")
    expect(b).to_have_class("reply chosen")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_after_rating.png"))
    assert not errors, errors
    assert not [u for u in requests if not u.startswith(chat_service.base_url)]
    page.close()

    with FeedbackStore(chat_service.db, hash_key=HASH_KEY) as store:
        current = {(e["kind"], e["reply_id"]): e for e in store.events(user_id="ann")}
        history = store.events(user_id="ann", history=True)
        assert store.was_shown("ann", a_id) and store.was_shown("ann", b_id)
    thumbs = current[("thumbs", a_id)]
    assert (thumbs["value"], thumbs["reason_tags"]) == (1, ["too long"])
    assert [e["value"] for e in history if e["kind"] == "thumbs" and e["reply_id"] == a_id] == [
        -1, 1, 1]  # fmt: skip
    assert current[("rating", b_id)]["value"] == 4
    pair = current[("pairwise", a_id)]
    assert (pair["other_reply_id"], pair["value"]) == (b_id, -1)  # B chosen over A


def test_chat_page_without_a_valid_link_says_so(browser, chat_service):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 390, "height": 700})  # phone width
    page.goto(chat_service.base_url + "/chat")
    expect(page.get_by_test_id("notice")).to_contain_text("personal chat link")
    expect(page.get_by_test_id("send")).to_be_disabled()
    page.goto(chat_service.base_url + "/chat?token=v1.bogus.token")
    expect(page.get_by_test_id("notice")).to_contain_text("expired or is not valid")
    page.close()
