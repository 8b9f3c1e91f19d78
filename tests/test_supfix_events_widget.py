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
    parley_serving,
    stack,
    wait_text,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_supfix_a_delta_marked_first_restarts_the_reply_bubble(
    stack: Stack,  # noqa: F811  (the fixture imported above)
    browser: Any,  # noqa: F811
    redis_url: str,
    key_prefix: str,
) -> None:
    stack.backend.script(["Hello ", "@everyone ", "and welcome."])
    redis = Redis.from_url(redis_url)
    events = RedisEventLog(redis, key_prefix, kept=1000, ttl_s=3600)
    try:
        async with parley_serving(stack):
            page = await new_page(browser)
            await page.goto(stack.page)
            await page.click(LAUNCHER)
            await ask(page, "hi")
            stack.backend.release()
            await wait_text(page, BOT_TEXT, "t => t.includes('@everyone')")

            saved = await page.evaluate(f"localStorage.getItem('parley-widget:{stack.site_key}')")
            conversation = f"shop:{json.loads(saved)['visitor_id']}"
            shown = await events.read(conversation, None)
            (reply_to,) = {json.loads(e.data)["reply_to"] for e in shown if e.name == "delta"}
            again = {"reply_to": reply_to, "text": "Hello ", "first": True}
            await events.append(conversation, [("delta", again)])
            restarted = await wait_text(page, BOT_TEXT, "t => t.trim() === 'Hello'")
            assert restarted.strip() == "Hello"  # not "Hello @everyone Hello"

            stack.backend.release_all()
            assert await final_answer(page) == "Hello @everyone and welcome."
    finally:
        await redis.aclose()
