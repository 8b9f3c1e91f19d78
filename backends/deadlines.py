"""The reply time limits every backend enforces: first token, gap between chunks, whole reply.

`Deadlines` bounds each wait of one reply; `bounded()` applies it to any chunk stream (the
in-process engine uses it; the HTTP backend also bounds its connect and header waits with it).
A limit that passes raises `BackendTimeout`, and the stream underneath is closed, which aborts
the request on the model server.

`FirstTokenLimit` learns a shorter first-token limit from a backend's recent first-token times,
and `first_token_within()` applies it to one try (the retry layer, `backends.resilience`, uses
both), so a hung request is given up in seconds while a slow server still gets its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar

from backends.base import Chunk
from bot.errors import BackendTimeout
from bot.settings import TimeoutSettings

T = TypeVar("T")


class Deadlines:
    """The three reply time limits: to the first content, between chunks, and in total
    (`total_s` from now, or the request's `deadline` in loop time if that comes first)."""

    def __init__(self, timeouts: TimeoutSettings, deadline: float | None = None) -> None:
        self._limits = timeouts
        self._started = now = time.monotonic()
        self._total = now + timeouts.total_s
        if deadline is not None:
            self._total = min(self._total, now + deadline - asyncio.get_running_loop().time())
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
            # Counted from when the next chunk is asked for: time the reader spent on the
            # last one (a platform's rate limit, the delivery's record) is not the server's.
            deadline, what = time.monotonic() + limits.gap_s, "next chunk"
        total = self._total
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
    chunks: AsyncGenerator[Chunk, None], timeouts: TimeoutSettings, deadline: float | None = None
) -> AsyncGenerator[Chunk, None]:
    """`chunks`, each within its time limit (`deadline`: see `Deadlines`); a chunk without
    text that only says the model is at work (its reasoning: `_progress`) counts as one. On a
    timeout the inner stream is cancelled at its await point and closed, so its own clean-up
    (aborting the request) runs."""
    clock = Deadlines(timeouts, deadline)
    async with contextlib.aclosing(chunks):
        while (chunk := await clock.wait(anext(chunks, None))) is not None:
            clock.chunk_arrived(bool(chunk.text) or _progress(chunk))
            yield chunk


class FirstTokenTimeout(BackendTimeout):
    """No first token within a try's adaptive limit (`FirstTokenLimit`), shorter than
    `first_token_s`: the retry layer tries again with the full limit."""


class FirstTokenLimit:
    """How long a try waits for its first token, learned from this backend's recent tries.

    A fixed limit has to fit the slowest moment of a loaded server (a long prefill behind a
    full batch), so with it every hang of a healthy server costs that long. Instead the limit
    is `first_token_factor` x the p90 of the last SAMPLES first-token times, kept within
    [`first_token_min_s`, `first_token_s`]. Only first tokens that arrived are samples; a try
    given up at this limit is retried with the full `first_token_s` (`backends.resilience`),
    so a server that slows down past the limit is measured by those retries and the limit
    follows it within a few dozen tries, while hangs, which never answer, do not stretch it.
    (Counting a give-up as a sample of its limit did stretch it: with 5% hangs and half the
    tries refused with 503, one sample in twelve was a give-up, enough to lift the p90.)
    Until MIN_SAMPLES are known, and with `adaptive_first_token` off, the limit is
    `first_token_s`. A wait keeps the limit it started with: cutting the waits of a bot's first
    burst to a limit learnt from the burst's fastest answers gave up requests that were only
    queued behind the others, so a hang in that first burst costs `first_token_s`.
    """

    SAMPLES = 100
    MIN_SAMPLES = 10
    QUANTILE = 0.9

    def __init__(self, timeouts: TimeoutSettings) -> None:
        self._limits = timeouts
        self._samples: deque[float] = deque(maxlen=self.SAMPLES)

    @property
    def ceiling(self) -> float:
        return self._limits.first_token_s

    def current(self) -> float:
        limits = self._limits
        if not limits.adaptive_first_token or len(self._samples) < self.MIN_SAMPLES:
            return limits.first_token_s
        ordered = sorted(self._samples)
        p90 = ordered[min(len(ordered) - 1, int(self.QUANTILE * len(ordered)))]
        adapted = max(limits.first_token_min_s, limits.first_token_factor * p90)
        return min(limits.first_token_s, adapted)

    def observe(self, seconds: float) -> None:
        """A try's first token came after `seconds`."""
        self._samples.append(seconds)

    async def wait(self, awaitable: Awaitable[T], *, started: float, full: bool) -> T:
        """`awaitable` within the first-token limit of a try that began at `started` (loop
        time): the full `first_token_s` when `full`, else the adaptive one."""
        loop = asyncio.get_running_loop()
        limit = self.ceiling if full else self.current()
        try:
            async with asyncio.timeout_at(started + limit):
                return await awaitable
        except TimeoutError:
            waited = loop.time() - started
            error = FirstTokenTimeout if limit < self.ceiling else BackendTimeout
            raise error(f"the server sent no first token in {waited:.1f} s") from None


async def first_token_within(
    chunks: AsyncGenerator[Chunk, None],
    limit: FirstTokenLimit,
    *,
    full: bool = False,
    deadline: float | None = None,
    deadline_honoured: bool = False,
) -> AsyncGenerator[Chunk, None]:
    """`chunks`, failing with a `BackendTimeout` (`FirstTokenTimeout` below `first_token_s`)
    if no text (nor reasoning: `_progress`) arrived within `limit`, or when the loop time
    passes `deadline` (the reply's `total_s` counted from its first try, so retries never
    extend it). The first-token time is recorded in `limit`. On a time-out the inner stream
    is closed, which aborts the request.

    `deadline_honoured`: the stream is a backend's that ends itself at
    `GenerationRequest.deadline` (Deadlines bounds each of its waits with it); the deadline is
    then only checked between chunks here, so that a chunk costs one timer, not two."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with contextlib.aclosing(chunks):
        first = True
        while True:
            waiting = anext(chunks, None)
            bounded = limit.wait(waiting, started=started, full=full) if first else waiting
            if deadline_honoured or deadline is None:
                chunk = await bounded
                if chunk is not None and deadline is not None and loop.time() > deadline:
                    raise BackendTimeout("the server sent no whole reply in time")
            else:
                chunk = await _before(bounded, deadline)
            if chunk is None:
                return
            if first and (chunk.text or _progress(chunk)):
                if chunk.text:  # a thinking model's reasoning is not a first-token time
                    limit.observe(loop.time() - started)
                first = False
            yield chunk


def _progress(chunk: Chunk) -> bool:
    """A chunk that only says the model is at work (a thinking model's reasoning, not shown):
    its first-token wait is over, the backend's gap limit bounds it from there."""
    return not (chunk.text or chunk.usage or chunk.finish_reason or chunk.notice)


async def _before(awaitable: Awaitable[T], deadline: float) -> T:
    try:
        async with asyncio.timeout_at(deadline):
            return await awaitable
    except TimeoutError:
        raise BackendTimeout("the server sent no whole reply in time") from None
