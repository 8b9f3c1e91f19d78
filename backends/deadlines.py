"""The reply time limits every backend enforces: first token, gap between chunks, whole reply.

`Deadlines` bounds each wait of one reply; `bounded()` applies it to any chunk stream (the
in-process engine uses it; the HTTP backend also bounds its connect and header waits with it).
A limit that passes raises `BackendTimeout`, and the stream underneath is closed, which aborts
the request on the model server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar

from backends.base import Chunk
from bot.errors import BackendTimeout
from bot.settings import TimeoutSettings

T = TypeVar("T")


class Deadlines:
    """The three reply time limits: to the first content, between chunks, and in total."""

    def __init__(self, timeouts: TimeoutSettings) -> None:
        self._limits = timeouts
        self._started = time.monotonic()
        self._last_chunk: float | None = None

    def chunk_arrived(self, has_content: bool) -> None:
        # The gap limit starts counting at the first content; before that, first_token_s rules.
        if has_content or self._last_chunk is not None:
            self._last_chunk = time.monotonic()

    def _next(self) -> tuple[float, str]:
        limits = self._limits
        if self._last_chunk is None:
            deadline, what = self._started + limits.first_token_s, "first token"
        else:
            deadline, what = self._last_chunk + limits.gap_s, "next chunk"
        total = self._started + limits.total_s
        return (total, "whole reply") if total < deadline else (deadline, what)

    async def wait(self, awaitable: Awaitable[T]) -> T:
        deadline, what = self._next()
        loop_deadline = asyncio.get_running_loop().time() + (deadline - time.monotonic())
        try:
            async with asyncio.timeout_at(loop_deadline):
                return await awaitable
        except TimeoutError:
            raise BackendTimeout(f"the server sent no {what} in time") from None


async def bounded(
    chunks: AsyncGenerator[Chunk, None], timeouts: TimeoutSettings
) -> AsyncGenerator[Chunk, None]:
    """`chunks`, each within its time limit. On a timeout the inner stream is cancelled at its
    await point and closed, so its own clean-up (aborting the request) runs."""
    clock = Deadlines(timeouts)
    async with contextlib.aclosing(chunks):
        while (chunk := await clock.wait(anext(chunks, None))) is not None:
            clock.chunk_arrived(bool(chunk.text))
            yield chunk
