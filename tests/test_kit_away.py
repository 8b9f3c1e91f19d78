"""A platform that stops answering (adapters.kit.away): the turns of its conversations wait
without asking the model, one look at a time tells when it is back, and a conversation whose
answers the platform keeps failing while it answers the looks is given up after a few tries
instead of asking the model again and again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from adapters.kit.away import MAX_TRIES, PlatformWatch
from bot.conversation.manager import OutputAway
from bot.errors import PlatformAway
from bot.types import ConversationKey

KEY = ConversationKey("test", "1")
log = logging.getLogger("test.away")


async def test_one_look_at_a_time_however_many_conversations_wait() -> None:
    """Every waiting conversation looked at once (500 getMe calls for one look, the review's
    count), against a platform that was already struggling."""
    looks = 0

    async def look() -> None:
        nonlocal looks
        looks += 1
        await asyncio.sleep(0.2)
        raise TimeoutError("still away")

    watch = PlatformWatch("test", look, service="Test", look_s=0.0, logger=log)
    with pytest.raises(OutputAway):
        await watch.away(KEY, PlatformAway("no connection"))  # one look: away
    assert watch.down and looks == 1
    results = await asyncio.gather(
        *(watch.ensure_reachable() for _ in range(500)), return_exceptions=True
    )
    assert all(isinstance(r, OutputAway) for r in results)
    assert looks == 2


async def test_a_look_that_answers_lets_turns_run_again() -> None:
    answers = False

    async def look() -> None:
        if not answers:
            raise TimeoutError("still away")

    watch = PlatformWatch("test", look, service="Test", look_s=0.0, logger=log)
    with pytest.raises(OutputAway):
        await watch.away(KEY, PlatformAway("502"))
    assert watch.down
    answers = True
    await watch.ensure_reachable()
    assert not watch.down


async def test_one_conversations_failure_holds_no_other_while_the_platform_answers() -> None:
    """One channel's 503 made the platform "away" for every conversation until the next
    look, 5 s later, again at each of its tries (a helper's review): a look is taken at
    once, and when it answers only that conversation waits."""
    looks = 0

    async def look() -> None:
        nonlocal looks
        looks += 1

    watch = PlatformWatch("test", look, service="Test", look_s=5.0, logger=log)
    with pytest.raises(OutputAway):
        await watch.away(KEY, PlatformAway("503 for this channel"))
    assert looks == 1 and not watch.down
    await watch.ensure_reachable()  # another conversation's turn runs at once


async def test_a_conversation_the_platform_keeps_failing_is_given_up_after_a_few_tries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def look() -> None:
        return None

    watch = PlatformWatch("test", look, service="Test", look_s=0.0, logger=log)
    for _ in range(MAX_TRIES - 1):
        with pytest.raises(OutputAway):
            await watch.away(KEY, PlatformAway("500 for this chat"))
    await watch.away(KEY, PlatformAway("500 for this chat"))  # given up: no OutputAway
    assert "given up" in caplog.text
    # Another conversation, and this one once shown, start counting afresh.
    with pytest.raises(OutputAway):
        await watch.away(ConversationKey("test", "2"), PlatformAway("502"))
    watch.shown(KEY)
    with pytest.raises(OutputAway):
        await watch.away(KEY, PlatformAway("502"))


async def test_failures_while_a_look_is_out_or_soon_after_one_answered_take_no_look() -> None:
    """A second failure during the look marked the platform away though the look answered,
    and every failure took a look of its own (a review of this session's commits): one look
    at a time, at most one every look_s, and only a failed look marks the platform away."""
    looks = 0

    async def look() -> None:
        nonlocal looks
        looks += 1
        await asyncio.sleep(0.1)

    watch = PlatformWatch("test", look, service="Test", look_s=5.0, logger=log)

    async def fail(n: int) -> None:
        with pytest.raises(OutputAway):
            await watch.away(ConversationKey("test", str(n)), PlatformAway("503"))

    await asyncio.gather(fail(1), fail(2))
    for n in range(3, 50):
        await fail(n)
    assert looks == 1 and not watch.down
