"""The web chat widget shows each message once, and every one of them, across reloads: what
came while no page was open, and what was shown from its event before it was recorded. In
real headless Chromium against the real support API, PostgreSQL and Redis, as
tests/test_support_widget.py (whose stack this reuses)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from adapters.support import api as support_api
from adapters.support.events import RedisEventLog
from adapters.support.settings import SupportSettings
from bot import phrases
from bot.policy import AccessRules
from bot.types import ConversationKey
from tests.support_helpers import bearer
from tests.test_support_widget import (
    BOT_TEXT,
    LAUNCHER,
    USER_TEXT,
    Stack,
    ask,
    browser,
    final_answer,
    new_page,
    open_chat,
    parley_serving,
    stack,
    wait_text,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
__all__ = ["browser", "stack"]  # the fixtures

NOTICES = "parley-chat .msg.notice"
AGENTS = "parley-chat .msg.agent .body"


async def test_a_notice_that_came_while_no_page_was_open_shows_once(
    stack: Stack, browser: Any
) -> None:
    notice = phrases.say(phrases.UNAVAILABLE, "en")
    stack.backend.script(["", notice])
    async with parley_serving(stack) as app:
        page = await open_chat(browser, stack.page)
        await ask(page, "Anyone there?")
        await stack.backend.streaming.wait()
        context = page.context
        await page.close()  # the notice comes while no page is open
        stack.backend.release_all()
        await app.manager.wait_idle()

        page = await context.new_page()
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        await page.locator(NOTICES).first.wait_for()
        stack.backend.script(["Later."], gated=False)
        await ask(page, "again")
        # The stream had the notice too (after the last event the closed page saw); the
        # answer after it shows that the stream got that far.
        assert await final_answer(page) == "Later."
        assert await page.locator(NOTICES).all_inner_texts() == [notice]


async def test_an_answer_shown_before_it_was_recorded_is_there_after_a_reload(
    stack: Stack, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.backend.script(["Kept ", "after all."], gated=False)
    async with parley_serving(stack) as app:
        reached, recorded = asyncio.Event(), asyncio.Event()
        record_reply = app.store.record_reply

        async def held(*args: Any, **kwargs: Any) -> Any:
            reached.set()
            await recorded.wait()
            return await record_reply(*args, **kwargs)

        # The seam: the answer's record waits, as it does for a moment after its last event.
        monkeypatch.setattr(app.store, "record_reply", held)
        page = await open_chat(browser, stack.page)
        await ask(page, "Still there?")
        assert await final_answer(page) == "Kept after all."
        await reached.wait()

        await page.reload()  # the history has the question, not yet its answer
        await page.click(LAUNCHER)
        await wait_text(page, USER_TEXT, "t => t === 'Still there?'")
        assert await final_answer(page) == "Kept after all."
        recorded.set()
        await app.manager.wait_idle()

        await page.reload()  # recorded now: shown once, from the history
        await page.click(LAUNCHER)
        assert await final_answer(page) == "Kept after all."
        stack.backend.script(["Yes."], gated=False)
        await ask(page, "Sure?")
        assert await final_answer(page, 2) == "Yes."
        assert await page.locator(BOT_TEXT).all_inner_texts() == ["Kept after all.", "Yes."]


async def test_an_agents_message_that_came_while_no_page_was_open_shows_once(
    stack: Stack, browser: Any
) -> None:
    stack.backend.script(["Hello."], gated=False)
    async with parley_serving(stack) as app:
        page = await open_chat(browser, stack.page)
        await ask(page, "Where is my parcel?")
        assert await final_answer(page) == "Hello."
        visitor = await page.evaluate(
            "() => Object.entries(localStorage).map(([, v]) => JSON.parse(v).visitor_id)[0]"
        )
        key = ConversationKey("support", f"shop:{visitor}")
        await app.desk.take(key, "Dana")
        await page.locator(NOTICES).first.wait_for()  # "You are talking with Dana."
        context = page.context
        await page.close()
        await app.desk.agent_message(key, "On its way.", agent="Dana", idempotency_key="a1")
        await app.manager.wait_idle()

        page = await context.new_page()
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        await page.locator(AGENTS).first.wait_for()
        await app.desk.agent_message(key, "Anything else?", agent="Dana", idempotency_key="a2")
        await wait_text(page, AGENTS, "t => t === 'Anything else?'")
        assert await page.locator(AGENTS).all_inner_texts() == ["On its way.", "Anything else?"]


@contextlib.contextmanager
def first_stream_goes_silent(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.Event]:
    """The seam: once the event is set, the page's first event stream sends nothing more and
    stays open (a network that drops packets, a laptop that slept); later ones work."""
    real, opened = support_api.stream, []
    silent = asyncio.Event()

    async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        first = not opened
        opened.append(True)
        async for chunk in real(*args, **kwargs):
            if not (first and silent.is_set()):
                yield chunk

    monkeypatch.setattr(support_api, "stream", stream)
    yield silent


async def test_a_stream_gone_silent_is_opened_again(
    stack: Stack, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    support = SupportSettings(  # type: ignore[call-arg]
        token_secret="widget-test-secret-32-characters", visitor_messages=5, keepalive_s=0.5
    )
    stack.backend.script(["Hello."], gated=False)
    with first_stream_goes_silent(monkeypatch) as silent:
        async with parley_serving(stack, support):
            page = await open_chat(browser, stack.page)
            await ask(page, "one")
            assert await final_answer(page) == "Hello."
            silent.set()
            await ask(page, "two")  # its answer comes on the next stream, after "Hello."
            assert await final_answer(page, 2) == "Hello."
            assert await page.locator(BOT_TEXT).count() == 2


async def test_a_stream_is_opened_again_when_the_browser_is_back_online(
    stack: Stack, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.backend.script(["Hello."], gated=False)
    with first_stream_goes_silent(monkeypatch) as silent:
        async with parley_serving(stack):  # keep-alives every 15 s: not waited for here
            page = await open_chat(browser, stack.page)
            await ask(page, "one")
            assert await final_answer(page) == "Hello."
            silent.set()
            await ask(page, "two")
            await page.evaluate("() => window.dispatchEvent(new Event('online'))")
            assert await final_answer(page, 2) == "Hello."
            assert await page.locator(BOT_TEXT).count() == 2


async def test_a_notice_of_the_same_text_as_one_in_the_history_is_not_taken_for_it(
    stack: Stack, browser: Any, redis_url: str, key_prefix: str
) -> None:
    """Notices that name no message (said to a message never kept) and have the same text:
    the history shows one, and another comes on the stream. The widget matched them by their
    text and dropped the second as "the history showed it"; it matches them by their ids."""
    said = phrases.say(phrases.UNAVAILABLE, "en")
    shown = {"id": "1", "role": "notice", "text": said, "sources": [], "reply_to": "",
             "created_at": "2026-12-01T10:00:00+00:00", "notice_id": "notice-first"}  # fmt: skip
    events = [
        ("notice", {"id": "notice-second", "reply_to": None, "text": said}),
        ("notice", {"id": "notice-last", "reply_to": None, "text": "The last one."}),
    ]
    async with _history_then_events(stack, browser, redis_url, key_prefix, [shown], events) as page:
        assert await page.locator(NOTICES).all_inner_texts() == [said, said, "The last one."]


@contextlib.asynccontextmanager
async def _history_then_events(
    stack: Stack,
    browser: Any,
    redis_url: str,
    key_prefix: str,
    history: list[dict[str, Any]],
    events: list[tuple[str, dict[str, Any]]],
) -> AsyncIterator[Any]:
    """A page opened on `history` (the seam: GET /v1/history answers it), then `events`
    appended to its visitor's event stream, the last of them a notice "The last one.":
    the page once that notice shows."""
    origin = stack.page.rstrip("/")

    async def served(route: Any) -> None:
        await route.fulfill(
            json={"messages": history, "next": None},
            headers={"Access-Control-Allow-Origin": origin},
        )

    redis = Redis.from_url(redis_url)
    log = RedisEventLog(redis, key_prefix, kept=1000, ttl_s=3600)
    try:
        async with parley_serving(stack):
            page = await new_page(browser)
            await page.route(f"{stack.api}/v1/history*", served)
            await page.goto(stack.page)
            await page.click(LAUNCHER)
            await page.locator(NOTICES).first.wait_for()
            conversation = f"shop:{(await saved_state(page, stack))['visitor_id']}"
            await log.append(conversation, events)
            await wait_text(page, NOTICES, "t => t === 'The last one.'")
            yield page
    finally:
        await redis.aclose()


async def saved_state(page: Any, stack: Stack) -> dict[str, Any]:
    """What the widget keeps in localStorage across reloads."""
    saved = await page.evaluate(f"localStorage.getItem('parley-widget:{stack.site_key}')")
    kept: dict[str, Any] = json.loads(saved)
    return kept


async def test_a_notice_to_a_refused_retry_does_not_rewind_every_later_page(
    stack: Stack, browser: Any
) -> None:
    """A message kept, then its retry (the same Idempotency-Key) refused: the operator blocked
    the visitor meanwhile. The intake's "not allowed" notice names the kept message, and by
    design no history ever shows it (nothing records a refused message). The widget took it
    for an answer not yet recorded and resumed every later page from before it: the notice
    again below newer messages, on every reload, for good."""
    stack.backend.script(["Hel", "lo."])
    origin = stack.page.rstrip("/")
    async with parley_serving(stack) as app:
        page = await open_chat(browser, stack.page)
        await ask(page, "first")
        await stack.backend.streaming.wait()  # its turn holds the conversation
        saved = await saved_state(page, stack)
        visitor = {**bearer(saved["token"]), "Origin": origin}
        async with httpx.AsyncClient(base_url=stack.api, headers=visitor) as client:
            for text in ("one", "two"):  # from the visitor's other device, while it waits
                posted = await client.post(
                    "/v1/messages", json={"text": text}, headers={"Idempotency-Key": text}
                )
                assert posted.status_code == 202, posted.text
        stack.backend.release_all()
        await app.manager.wait_idle()
        # "one" and "two" waited together: one answer, which names "two".
        assert await final_answer(page, 2) == "Hello."

    conversation = f"shop:{saved['visitor_id']}"
    blocked = SupportSettings(  # type: ignore[call-arg]
        token_secret="widget-test-secret-32-characters",
        visitor_messages=5,
        access=AccessRules(blocked_chats=[conversation]),
    )
    refused = phrases.say(phrases.NOT_ALLOWED, "en")
    async with parley_serving(stack, blocked) as app:
        await page.reload()
        await page.click(LAUNCHER)
        assert await final_answer(page, 2) == "Hello."
        async with httpx.AsyncClient(base_url=stack.api, headers=visitor) as client:
            again = await client.post(
                "/v1/messages", json={"text": "one"}, headers={"Idempotency-Key": "one"}
            )
        assert again.status_code == 403, again.text
        await wait_text(page, NOTICES, f"t => t === {json.dumps(refused)}")

        await page.reload()
        await page.click(LAUNCHER)
        assert await final_answer(page, 2) == "Hello."
        await app.desk.take(ConversationKey("support", conversation), "Dana")
        taken = await wait_text(page, NOTICES, "t => t.includes('Dana')")
        # The stream resumed after the notice (in no history, as every refusal's): it is not
        # shown again under the answers, and the next page has nothing to resume from.
        assert await page.locator(NOTICES).all_inner_texts() == [taken]
        assert await page.locator(USER_TEXT).all_inner_texts() == ["first", "one", "two"]
        assert await page.locator(BOT_TEXT).all_inner_texts() == ["Hello.", "Hello."]
        assert (await saved_state(page, stack)).get("unrecorded") == []


async def test_an_earlier_releases_notice_event_is_not_shown_again_beside_its_history_row(
    stack: Stack, browser: Any, redis_url: str, key_prefix: str
) -> None:
    """A notice said while no page was open, by a worker of the release before `id` (its
    event has none), then the page opened after the upgrade: the history's row names it by
    `notice_id`, the stream replays the event without one. The widget matched an event
    without an id against the history's text only where the row had no id either, so the
    notice showed twice."""
    said = phrases.say(phrases.RATE_LIMITED, "en")
    asked = {"id": "7", "role": "user", "text": "hello", "sources": [], "reply_to": "",
             "created_at": "2026-12-01T10:00:00+00:00"}  # fmt: skip
    shown = {"id": "8", "role": "notice", "text": said, "sources": [], "reply_to": "7",
             "created_at": "2026-12-01T10:00:01+00:00", "notice_id": "notice-7"}  # fmt: skip
    events = [
        ("notice", {"reply_to": "7", "text": said}),  # the earlier release's event
        ("notice", {"id": "notice-last", "reply_to": None, "text": "The last one."}),
    ]
    history = [asked, shown]  # as this release shows it
    async with _history_then_events(stack, browser, redis_url, key_prefix, history, events) as page:
        assert await page.locator(NOTICES).all_inner_texts() == [said, "The last one."]
