"""`renewing`: the keep-alive under Redis locks and SQL leases stops when its block ends."""

from __future__ import annotations

import asyncio

from bot.keepalive import renewing


async def test_renews_periodically_and_stops_with_the_block() -> None:
    calls = 0
    thrice = asyncio.Event()

    async def renew() -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            thrice.set()
        return True

    async with renewing(renew, 0.01, name="test"):
        await thrice.wait()
    seen = calls
    await asyncio.sleep(0.05)
    assert calls == seen  # nothing renews after the block


async def test_a_renewal_that_says_no_ends_the_renewing() -> None:
    calls = 0

    async def renew() -> bool:
        nonlocal calls
        calls += 1
        return False

    async with renewing(renew, 0.01, name="test"):
        await asyncio.sleep(0.1)
    assert calls == 1


async def test_stops_even_when_a_renewal_swallows_the_cancellation() -> None:
    """Python 3.11's asyncio.wait_for returns the result of a call that finished as the
    cancellation came, and the cancellation is lost (redis-py sends every command through
    one). The renewer must still stop, or it keeps a lock alive for ever after its holder."""
    in_flight = asyncio.Event()
    calls = 0
    swallowed = 0

    async def renew() -> bool:
        nonlocal calls, swallowed
        calls += 1
        in_flight.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed += 1  # what wait_for does when the awaited call is already done
        return True

    async with asyncio.timeout(5):  # the bug this guards against hung here for ever
        async with renewing(renew, 0.001, name="test"):
            await in_flight.wait()
    seen = calls
    await asyncio.sleep(0.05)
    assert calls == seen


async def test_a_cancelled_holder_is_cancelled() -> None:
    async def renew() -> bool:
        return True

    async def hold() -> None:
        async with renewing(renew, 0.01, name="test"):
            await asyncio.sleep(10)

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.03)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done and task.cancelled()
