"""Renewing something while a block runs: a lock's expiry in Redis, a lease in SQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


@asynccontextmanager
async def renewing(
    renew: Callable[[], Awaitable[bool]], every_s: float, *, name: str
) -> AsyncIterator[None]:
    """Call `renew` every `every_s` seconds while the block runs, until it returns False.

    The renewer is told to stop by an event as well as cancelled, and the block's exit waits
    for it. Cancelling alone is not enough: on Python 3.11, a cancellation that arrives just
    as an `asyncio.wait_for` inside a driver finishes is lost (CPython gh-86296; redis-py
    sends every command through one), and a renewer that missed it would keep a lock alive
    for ever after its holder left.
    """
    stop = asyncio.Event()

    async def run() -> None:
        while True:
            try:
                async with asyncio.timeout(every_s):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            if stop.is_set() or not await renew():
                return

    renewer = asyncio.create_task(run(), name=name)
    try:
        yield
    finally:
        stop.set()
        renewer.cancel()
        # wait() rather than awaiting the task: a cancellation of *this* task must propagate.
        await asyncio.wait([renewer])
