"""The outbound queue: every Bot API call the bot makes passes through `FloodGate`.

PTB hands each request to a rate limiter (`ApplicationBuilder.rate_limiter`), so this is the
one place that knows Telegram's flood limits: about one message per second per chat, 20 per
minute per group, about 30 per second overall. Each limit is a sliding window; a call holds a
slot from before it is sent until its answer arrives, and the slot's time is the answer's
time. The server saw the call before it answered, so the server never counts more calls in a
window than we did, whatever the network delay.

A call to one chat waits for the previous call to that chat (the per-chat window holds one
slot), so the chat's calls go out in order, one by one: that is the per-chat queue.
A 429 (`RetryAfter`) is never dropped: the same call is re-sent after `retry_after`, while
the chat's slot stays taken so nothing else overtakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from telegram.error import BadRequest, NetworkError, RetryAfter
from telegram.ext import BaseRateLimiter

log = logging.getLogger(__name__)

_Result = bool | dict[str, Any] | list[dict[str, Any]]

# Above retry_after: the server's clock and ours differ by the network's delay.
RETRY_MARGIN_S = 0.1
NETWORK_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Limits:
    per_chat: int = 1
    per_chat_s: float = 1.0
    per_group: int = 20
    per_group_s: float = 60.0
    overall: int = 30
    overall_s: float = 1.0


class SlidingWindow:
    """At most `limit` calls in any `period` seconds, counting calls still in flight."""

    def __init__(self, limit: int, period: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._period = period
        self._clock = clock
        self._done: deque[float] = deque()
        self._busy = 0
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        while True:
            now = self._clock()
            while self._done and self._done[0] <= now - self._period:
                self._done.popleft()
            if len(self._done) + self._busy < self._limit:
                self._busy += 1
                return
            wait = self._done[0] + self._period - now if self._done else None
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    def release(self) -> None:
        self._busy -= 1
        self._done.append(self._clock())
        # Waiters hold the old event; a fresh one is for the next round.
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def idle(self) -> bool:
        now = self._clock()
        return self._busy == 0 and all(t <= now - self._period for t in self._done)


class FloodGate(BaseRateLimiter[int]):
    """PTB rate limiter honouring Telegram's per-chat, per-group and overall limits."""

    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic):
        self.limits = limits or Limits()
        self._clock = clock
        self._overall = SlidingWindow(self.limits.overall, self.limits.overall_s, clock)
        self._chats: dict[int | str, SlidingWindow] = {}
        self._groups: dict[int | str, SlidingWindow] = {}
        self.retries_after_429 = 0

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, _Result]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> _Result:
        chat_id = data.get("chat_id")
        if endpoint == "getUpdates" or chat_id is None:
            return await self._send(callback, args, kwargs, endpoint, [])
        windows = self._windows_for(_chat_key(chat_id))
        return await self._send(callback, args, kwargs, endpoint, [*windows, self._overall])

    def _windows_for(self, chat: int | str) -> list[SlidingWindow]:
        self._forget_idle()
        lim = self.limits
        windows = [
            self._chats.setdefault(chat, SlidingWindow(lim.per_chat, lim.per_chat_s, self._clock))
        ]
        if _is_group(chat):
            windows.append(
                self._groups.setdefault(
                    chat, SlidingWindow(lim.per_group, lim.per_group_s, self._clock)
                )
            )
        return windows

    def _forget_idle(self) -> None:
        """Keeps the maps from growing with every chat ever seen."""
        if len(self._chats) > 1000:
            self._chats = {k: w for k, w in self._chats.items() if not w.idle}
            self._groups = {k: w for k, w in self._groups.items() if not w.idle}

    async def _send(
        self,
        callback: Callable[..., Coroutine[Any, Any, _Result]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        windows: list[SlidingWindow],
    ) -> _Result:
        for window in windows:  # chat first: waiting for it holds no shared slot
            await window.acquire()
        try:
            return await self._until_accepted(callback, args, kwargs, endpoint)
        finally:
            for window in reversed(windows):
                window.release()

    async def _until_accepted(
        self,
        callback: Callable[..., Coroutine[Any, Any, _Result]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
    ) -> _Result:
        """Re-sends the same call after every 429 (never dropped) and after a few network
        failures (a timed-out send may have arrived: a rare duplicate beats a lost answer)."""
        network_failures = 0
        while True:
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as exc:
                self.retries_after_429 += 1
                wait = retry_after_s(exc) + RETRY_MARGIN_S
                log.warning("%s: flood control, re-sending in %.1f s", endpoint, wait)
                await asyncio.sleep(wait)
            except NetworkError as exc:
                if isinstance(exc, BadRequest) or network_failures >= NETWORK_RETRIES:
                    raise
                network_failures += 1
                log.warning("%s: %s; retry %d", endpoint, exc, network_failures)
                await asyncio.sleep(2.0 ** (network_failures - 1))


def retry_after_s(exc: RetryAfter) -> float:
    value: int | timedelta = exc._retry_after  # the public property warns about its type
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _chat_key(chat_id: object) -> int | str:
    try:
        return int(str(chat_id))
    except ValueError:
        return str(chat_id)  # "@channelname"


def _is_group(chat: int | str) -> bool:
    # Private chats have the user's (positive) id; groups, supergroups and channels are
    # negative or addressed by @name.
    return isinstance(chat, str) or chat < 0
