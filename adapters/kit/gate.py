"""The outbound gate: at most so many calls per chat, per group and overall, in any window.

Every platform documents limits of this shape (Telegram: about 1 message a second per chat,
20 a minute per group, 30 a second overall; Discord: 5 per 5 s per channel). A call holds a
slot from before it is sent until its answer arrives, and the slot's time is the answer's
time: the server saw the call before it answered, so it never counts more calls in a window
than we did, whatever the network's delay. A chat whose limit is one call at a time gets its
calls out in order, one by one.

`LocalGate` keeps the windows in the process. `RedisGate` also keeps them in Redis, so that
several workers of one bot (webhooks behind a load balancer) keep the limits together: one
Lua script checks every window of a call and takes a slot in each atomically (a sorted set of
slot times per window, keys under a prefix). A slot in flight is stored `hold_s` ahead, so a
worker that dies mid-call frees it after `hold_s` at most. When Redis fails, the gate goes on
with the process's own windows, logs that once, and asks Redis again after a pause; the slots
whose take or give-back got no answer are freed once Redis answers again (a take still on its
way then finds its slot's tombstone and adds nothing), so a Redis that froze for a while does
not hold the chats that had a call in flight for `hold_s` after it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bot.outage import Outage
from bot.storage.keys import gate_tomb, gate_window

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# Windows of chats idle this long are forgotten once there are many.
FORGET_AFTER = 1000


@dataclass(frozen=True, slots=True)
class Rate:
    calls: int
    period_s: float


@dataclass(frozen=True, slots=True)
class Rates:
    per_chat: Rate
    per_group: Rate | None = None  # only for calls to a group
    overall: Rate | None = None


class Gate(Protocol):
    def slot(self, chat: str, *, group: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """Held from before a call to `chat` is sent until its answer arrives."""
        ...


class SlidingWindow:
    """At most `rate.calls` calls in any `rate.period_s`, counting calls still in flight."""

    def __init__(self, rate: Rate, clock: Clock, sleep: Sleep) -> None:
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._done: deque[float] = deque()
        self._busy = 0
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        while True:
            now = self._clock()
            while self._done and self._done[0] <= now - self._rate.period_s:
                self._done.popleft()
            if len(self._done) + self._busy < self._rate.calls:
                self._busy += 1
                return
            wait = self._done[0] + self._rate.period_s - now if self._done else None
            await _first_of(self._changed.wait(), self._sleep(wait) if wait else None)

    def release(self) -> None:
        self._busy -= 1
        self._done.append(self._clock())
        # Waiters hold the old event; a fresh one is for the next round.
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def idle(self) -> bool:
        now = self._clock()
        return self._busy == 0 and all(t <= now - self._rate.period_s for t in self._done)


async def _first_of(*waits: Awaitable[Any] | None) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits if w is not None]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LocalGate:
    """The windows of this process only."""

    def __init__(
        self, rates: Rates, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.rates = rates
        self._clock = clock
        self._sleep = sleep
        self._overall = SlidingWindow(rates.overall, clock, sleep) if rates.overall else None
        self._chats: dict[str, SlidingWindow] = {}
        self._groups: dict[str, SlidingWindow] = {}

    @contextlib.asynccontextmanager
    async def slot(self, chat: str, *, group: bool) -> AsyncIterator[None]:
        windows = self._windows_for(chat, group)
        taken: list[SlidingWindow] = []
        try:
            for window in windows:  # chat first: waiting for it holds no shared slot
                await window.acquire()
                taken.append(window)
            yield
        finally:
            for window in reversed(taken):
                window.release()

    def _windows_for(self, chat: str, group: bool) -> list[SlidingWindow]:
        self._forget_idle()
        windows = [self._window(self._chats, chat, self.rates.per_chat)]
        if group and self.rates.per_group is not None:
            windows.append(self._window(self._groups, chat, self.rates.per_group))
        if self._overall is not None:
            windows.append(self._overall)
        return windows

    def _window(self, windows: dict[str, SlidingWindow], chat: str, rate: Rate) -> SlidingWindow:
        if chat not in windows:
            windows[chat] = SlidingWindow(rate, self._clock, self._sleep)
        return windows[chat]

    def _forget_idle(self) -> None:
        """Keeps the maps from growing with every chat ever seen."""
        if len(self._chats) > FORGET_AFTER:
            self._chats = {k: w for k, w in self._chats.items() if not w.idle}
            self._groups = {k: w for k, w in self._groups.items() if not w.idle}


# Every script starts with `now`: ARGV[1], or Redis's own clock when it is "".
_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: the call's windows, then the slot's tombstone. ARGV: now ("" = Redis's own clock),
# slot id, hold_s, poll_s, then calls and period_s per window. Returns "0" with the slot taken
# in every window, "-1" for a slot given up already (a take that reached Redis after its
# caller stopped waiting), else how long to wait (as a string: Lua numbers come back as
# integers).
_ACQUIRE = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return '-1' end
local hold, poll = tonumber(ARGV[3]), tonumber(ARGV[4])
local wait = 0
for i = 1, #KEYS - 1 do
  local key = KEYS[i]
  local calls, period = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
  local count = redis.call('ZCARD', key)
  if count >= calls then
    local blocking = redis.call('ZRANGE', key, count - calls, count - calls, 'WITHSCORES')
    local at = tonumber(blocking[2])
    -- a slot in flight frees when its answer comes: ask again soon rather than after hold
    local until_free = at > now and poll or at + period - now
    if until_free > wait then wait = until_free end
  end
end
if wait > 0 then return tostring(wait) end
for i = 1, #KEYS - 1 do
  local key = KEYS[i]
  local period = tonumber(ARGV[4 + 2 * i])
  redis.call('ZADD', key, now + hold, ARGV[2])
  redis.call('PEXPIRE', key, math.ceil((hold + period) * 1000))
end
return '0'
"""
)

# The answer came: the slot's time becomes now.
_RELEASE = (
    _NOW
    + """
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now, ARGV[2])
end
return 1
"""
)


# A slot whose take or give-back got no answer (Redis frozen, or too slow): KEYS are its
# windows, then its tombstone; ARGV now ("" = Redis's clock), the slot id and hold_s. The
# call was made either way (through the process's own windows): its slot's time becomes now,
# as a give-back would make it, and the tombstone keeps a take still on its way to Redis from
# adding the slot after all.
_FORGET = (
    _NOW
    + """
for i = 1, #KEYS - 1 do
  redis.call('ZADD', KEYS[i], 'XX', now, ARGV[2])
end
redis.call('SET', KEYS[#KEYS], '1', 'PX', math.ceil(tonumber(ARGV[3]) * 1000))
return 1
"""
)
# Slots waiting to be forgotten once Redis answers again (the oldest dropped beyond this:
# each frees itself after hold_s anyway).
ORPHANS_KEPT = 1000


class RedisGate:
    """The windows in Redis, shared by every worker of one bot (keys under `prefix`), in
    front of this process's own windows (its order per chat, and the fallback)."""

    def __init__(
        self,
        client: Redis,
        rates: Rates,
        *,
        prefix: str,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        hold_s: float = 30.0,
        poll_s: float = 0.05,
        retry_after_failure_s: float = 5.0,
    ) -> None:
        from redis.exceptions import RedisError  # the optional [redis] extra

        self.rates = rates
        self._prefix = prefix
        self._clock = clock  # None: Redis's own clock, the same for every worker
        self._sleep = sleep
        self._hold_s, self._poll_s = hold_s, poll_s
        self._local = LocalGate(rates, clock=clock or time.monotonic, sleep=sleep)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._forget = client.register_script(_FORGET)
        # Slots a failure left in Redis, or that may still reach it: (windows, slot id), and
        # the task that takes them out once Redis answers again.
        self._orphans: deque[tuple[list[str], str]] = deque(maxlen=ORPHANS_KEPT)
        self._forgetting: asyncio.Task[None] | None = None
        self._failures: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._outage = Outage(
            retry_after_failure_s,
            meanwhile="the outbound gate limits this process only",
            logger=log,
        )

    @contextlib.asynccontextmanager
    async def slot(self, chat: str, *, group: bool) -> AsyncIterator[None]:
        async with self._local.slot(chat, group=group):
            keys, limits = self._windows(chat, group)
            slot_id = await self._take(keys, limits)
            try:
                yield
            finally:
                if slot_id is not None:
                    await self._give_back(keys, slot_id)

    def _windows(self, chat: str, group: bool) -> tuple[list[str], list[Rate]]:
        r = self.rates
        named = [("chat", chat, r.per_chat)]
        if group and r.per_group is not None:
            named.append(("group", chat, r.per_group))
        if r.overall is not None:
            named.append(("overall", "all", r.overall))
        return [gate_window(self._prefix, kind, name) for kind, name, _ in named], [
            rate for *_, rate in named
        ]

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def _take(self, keys: list[str], limits: list[Rate]) -> str | None:
        """Waits for a slot in every shared window; None when Redis cannot be asked."""
        if not self._outage.should_try():
            return None
        slot_id = uuid.uuid4().hex
        per_key = [str(v) for rate in limits for v in (rate.calls, rate.period_s)]
        while True:
            args = [self._now(), slot_id, str(self._hold_s), str(self._poll_s), *per_key]
            try:
                wait = float(await self._acquire(keys=[*keys, self._tomb(slot_id)], args=args))
            except self._failures as exc:
                # The take may still reach Redis (a frozen connection delivers it later):
                # its slot would be held hold_s for a call that went another way.
                self._orphans.append((keys, slot_id))
                self._outage.failed(exc)
                return None
            self._outage.succeeded()
            if self._orphans and self._forgetting is None:  # in the background: no call waits
                self._forgetting = asyncio.create_task(self._forget_orphans())
            if wait == 0:
                return slot_id
            if wait < 0:
                return None
            await self._sleep(wait)

    async def _give_back(self, keys: list[str], slot_id: str) -> None:
        try:
            await self._release(keys=keys, args=[self._now(), slot_id])
        except self._failures as exc:
            self._orphans.append((keys, slot_id))  # held hold_s unless forgotten sooner
            self._outage.failed(exc)

    async def _forget_orphans(self) -> None:
        """Frees in Redis the slots that failures left held there, once it answers again (a
        frozen Redis would otherwise hold every chat that had a call in flight for hold_s)."""
        try:
            while self._orphans:
                keys, slot_id = self._orphans.popleft()
                args = [self._now(), slot_id, str(self._hold_s)]
                try:
                    await self._forget(keys=[*keys, self._tomb(slot_id)], args=args)
                except self._failures as exc:
                    self._orphans.appendleft((keys, slot_id))  # the next answer tries again
                    self._outage.failed(exc)
                    return
        finally:
            self._forgetting = None

    def _tomb(self, slot_id: str) -> str:
        return gate_tomb(self._prefix, slot_id)
