"""The widget in real Chromium drops what an earlier attempt at an answer showed when a delta
marked `first` starts the answer again (a worker that took over, a turn run again after the
event log was out of reach), instead of showing the text twice. The second attempt's delta is
appended to the real event log in Redis, as the worker that takes over appends it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from adapters.support.events import RedisEventLog
from tests.test_support_widget import (  # noqa: F401  (fixtures: stack, browser)
    BOT_TEXT,
    LAUNCHER,
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


async def half_answered(
    stack: Stack,  # noqa: F811  (the fixture imported above)
    browser: Any,  # noqa: F811
    events: RedisEventLog,
) -> tuple[Any, str, str]:
    """A page whose question "hi" has its answer shown up to "@everyone" (the rest held by
    the model): the page, its conversation, and the `reply_to` of the answer's deltas."""
    stack.backend.script(["Hello ", "@everyone ", "and welcome."])
    page = await open_chat(browser, stack.page)
    await ask(page, "hi")
    stack.backend.release()
    await wait_text(page, BOT_TEXT, "t => t.includes('@everyone')")
    saved = await page.evaluate(f"localStorage.getItem('parley-widget:{stack.site_key}')")
    conversation = f"shop:{json.loads(saved)['visitor_id']}"
    shown = await events.read(conversation, None)
    (reply_to,) = {json.loads(e.data)["reply_to"] for e in shown if e.name == "delta"}
    return page, conversation, reply_to


async def test_supfix_a_delta_marked_first_restarts_the_reply_bubble(
    stack: Stack,  # noqa: F811  (the fixture imported above)
    browser: Any,  # noqa: F811
    redis_url: str,
    key_prefix: str,
) -> None:
    redis = Redis.from_url(redis_url)
    events = RedisEventLog(redis, key_prefix, kept=1000, ttl_s=3600)
    try:
        async with parley_serving(stack):
            page, conversation, reply_to = await half_answered(stack, browser, events)
            again = {"reply_to": reply_to, "text": "Hello ", "first": True}
            await events.append(conversation, [("delta", again)])
            restarted = await wait_text(page, BOT_TEXT, "t => t.trim() === 'Hello'")
            assert restarted.strip() == "Hello"  # not "Hello @everyone Hello"

            stack.backend.release_all()
            assert await final_answer(page) == "Hello @everyone and welcome."
    finally:
        await redis.aclose()


async def test_an_answer_cut_off_goes_when_a_new_attempt_answers_a_later_message(
    stack: Stack,  # noqa: F811  (the fixture imported above)
    browser: Any,  # noqa: F811
    redis_url: str,
    key_prefix: str,
) -> None:
    """After an outage of the event log, two waiting messages are answered together, under
    the newer one's id: the first message's half-written answer stayed on screen, busy, for
    good (and every reload replayed it)."""
    redis = Redis.from_url(redis_url)
    events = RedisEventLog(redis, key_prefix, kept=1000, ttl_s=3600)
    try:
        async with parley_serving(stack):
            page, conversation, cut = await half_answered(stack, browser, events)
            storage = f"localStorage.getItem('parley-widget:{stack.site_key}')"
            newer = str(int(cut) + 1)
            both = "Both questions, answered."
            await events.append(conversation, [
                ("delta", {"reply_to": newer, "text": both, "first": True}),
                ("answer", {"reply_to": newer, "text": both, "sources": []}),
            ])  # fmt: skip
            await page.wait_for_function(
                """() => {
                    const root = document.querySelector('parley-chat').shadowRoot;
                    const bots = [...root.querySelectorAll('.msg.bot')];
                    return bots.length === 1 && !bots[0].hasAttribute('aria-busy');
                }"""
            )
            assert await wait_text(page, BOT_TEXT, "t => true") == both
            newest = (await events.read(conversation, None))[-1].id
            saved = json.loads(await page.evaluate(storage))
            assert saved["last_event_id"] == newest  # a reload no longer replays the cut one
            stack.backend.release_all()
    finally:
        await redis.aclose()
