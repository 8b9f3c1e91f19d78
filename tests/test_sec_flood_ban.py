"""A flood ban is not waited out: Telegram answers hours of retry_after to a bot it banned, and
the FloodGate would hold the chat's queue and its turn asleep that long. Beyond
MAX_FLOOD_WAIT_S the call fails at once with the RetryAfter; a limit's retry_after is still
obeyed. The stand-in Bot API answers the 429s (one call per chat per `period`)."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from telegram.error import RetryAfter
from telegram.ext import ExtBot

from adapters.telegram.limits import MAX_FLOOD_WAIT_S, FloodGate, Limits
from tests.doubles import ScriptedBackend
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_api import Limits as ApiLimits
from tests.telegram_updates import feed, telegram_stack, text_update

BAN_S = 7200.0  # what Telegram answers a banned bot: hours
CHAT = 42
# Generous: a wait obeyed would take BAN_S.
PROMPT_S = 30.0


def banning_api() -> FakeBotApi:
    """One call per chat, then 429 with a retry_after of about BAN_S."""
    assert BAN_S > MAX_FLOOD_WAIT_S
    return FakeBotApi(ApiLimits(per_chat=(1, BAN_S)))


async def test_a_flood_ban_fails_the_call_at_once() -> None:
    api = banning_api()
    gate = FloodGate(Limits(per_chat=100))  # the gate lets it through; the server refuses
    async with (
        api.serving() as base_url,
        ExtBot(TOKEN, base_url=base_url, rate_limiter=gate) as bot,
    ):
        await bot.send_message(CHAT, "first")
        async with asyncio.timeout(PROMPT_S):
            with pytest.raises(RetryAfter, match=r"Retry in 7\d{3} seconds"):
                await bot.send_message(CHAT, "second")
    assert [c.method for c in api.rejected] == ["sendMessage"]  # not re-sent
    assert gate.retries_after_429 == 0
    assert api.texts(CHAT) == ["first"]


async def test_a_limit_s_retry_after_is_still_obeyed() -> None:
    api = FakeBotApi()  # one call per chat per second, as Telegram
    gate = FloodGate(Limits(per_chat=100))
    async with (
        api.serving() as base_url,
        ExtBot(TOKEN, base_url=base_url, rate_limiter=gate) as bot,
    ):
        await bot.send_message(CHAT, "first")
        await bot.send_message(CHAT, "second")
    refused, accepted = api.rejected[0], api.sent("sendMessage")[-1]
    assert accepted.params["text"] == refused.params["text"] == "second"
    assert accepted.at - refused.at >= 1.0  # re-sent once retry_after had passed
    assert gate.retries_after_429 == 1
    assert api.texts(CHAT) == ["first", "second"]


async def test_a_turn_in_a_banned_chat_ends_promptly_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stack = telegram_stack(tmp_path, ScriptedBackend(), api=banning_api(), stream_interval_s=0.05)
    async with stack as (_, adapter, api):
        await feed(adapter, text_update(1, CHAT, "hello"))
        await adapter.idle()
        assert api.texts(CHAT) == ["echo: hello"]
        await feed(adapter, text_update(2, CHAT, "again"))  # the chat's one call is spent
        async with asyncio.timeout(PROMPT_S):
            await adapter.idle()
        assert api.rejected, "the stand-in never refused: the test would prove nothing"
    said = [r.getMessage() for r in caplog.records]
    assert any(f"over {MAX_FLOOD_WAIT_S:.0f} s: the call fails" in line for line in said)
    assert any(re.search(r"reply not shown: .*Retry in 7\d{3} seconds", line) for line in said)
