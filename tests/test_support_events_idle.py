"""What an idle open stream costs the event log at each re-check, and what it still delivers.

The logs here are the real ones (Redis, memory), each counted through a subclass wrapping its
public `read` and `latest`: the seam the stream uses, not a double of Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from adapters.support import events
from adapters.support.events import Event, MemoryEventLog, RedisEventLog, stream
from bot.storage.keys import support_answered, support_events

CONVERSATION = "shop:v_idle"
RECHECKS = 4  # re-checks an idle stream goes through in each test


class CountedRedisLog(RedisEventLog):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()

    async def read(self, conversation: str, after: str | None) -> list[Event]:
        self.calls["read"] += 1
        return await super().read(conversation, after)

    async def latest(self, conversation: str) -> str | None:
        self.calls["latest"] += 1
        return await super().latest(conversation)


class CountedMemoryLog(MemoryEventLog):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        # Set by a test: run by the next `latest` after it looked (an append that lands
        # between a stream's look at the log and its decision whether to read it).
        self.after_latest: Callable[[], Awaitable[None]] | None = None

    async def read(self, conversation: str, after: str | None) -> list[Event]:
        self.calls["read"] += 1
        return await super().read(conversation, after)

    async def latest(self, conversation: str) -> str | None:
        self.calls["latest"] += 1
        newest = await super().latest(conversation)
        if self.after_latest is not None:
            after_latest, self.after_latest = self.after_latest, None
            await after_latest()
        return newest


class Rechecks:
    """The stream's `still_allowed`: counts the re-checks, and answers False (the stream
    ends) at the `last` one."""

    def __init__(self, last: int = 1_000_000) -> None:
        self.count = 0
        self.last = last
        self.second = asyncio.Event()  # the stream is open and idle, two re-checks in

    async def __call__(self) -> bool:
        self.count += 1
        if self.count >= 2:
            self.second.set()
        return self.count < self.last


async def _ids(
    body: AsyncIterator[bytes],
    found: list[tuple[int, bytes]],
    rechecks: Rechecks,
    arrived: asyncio.Event | None = None,
) -> None:
    """Each event chunk the stream sends, with the re-checks counted when it came."""
    async for chunk in body:
        if chunk.startswith(b"id: "):
            found.append((rechecks.count, chunk))
            if arrived is not None:
                arrived.set()


@pytest.fixture
async def redis_log(redis_url: str, key_prefix: str) -> AsyncIterator[CountedRedisLog]:
    client = aioredis.Redis.from_url(redis_url)
    log = CountedRedisLog(client, key_prefix, kept=100, ttl_s=60)
    await log.start()
    try:
        yield log
    finally:
        await log.aclose()
        await client.delete(
            support_events(key_prefix, CONVERSATION), support_answered(key_prefix, CONVERSATION)
        )
        await client.aclose()


async def _idle_stream_calls(log: CountedRedisLog | CountedMemoryLog) -> Counter[str]:
    """The log's calls of a stream that opens after one event and stays idle until its
    RECHECKS-th re-check, which ends it."""
    await log.append(CONVERSATION, [("answer", {"text": "earlier"})])
    rechecks = Rechecks(last=RECHECKS)
    found: list[tuple[int, bytes]] = []
    body = stream(log, CONVERSATION, None, keepalive_s=3600, still_allowed=rechecks)
    async with asyncio.timeout(30):
        await _ids(body, found, rechecks)
    assert found == [] and rechecks.count == RECHECKS  # idle, then ended by the last one
    return log.calls


@pytest.mark.redis
async def test_an_idle_stream_asks_redis_once_per_recheck(
    redis_log: CountedRedisLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle stream read the log twice every RECHECK_S: the newest id (XREVRANGE, to find a
    log that started again below it), then the events after its last id (XRANGE) though no
    append had woken it. 500 idle streams cost 200 Redis commands a second for nothing."""
    monkeypatch.setattr(events, "RECHECK_S", 0.05)
    calls = await _idle_stream_calls(redis_log)
    # The opening look, and one per re-check done (the last ends the stream before it).
    assert calls["latest"] == RECHECKS
    assert calls["read"] == 0, calls


async def test_an_idle_stream_on_the_memory_log_reads_it_once_per_recheck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same in memory (one worker without Redis)."""
    monkeypatch.setattr(events, "RECHECK_S", 0.05)
    calls = await _idle_stream_calls(CountedMemoryLog(kept=100, ttl_s=60))
    assert calls["latest"] == RECHECKS
    assert calls["read"] == 0, calls


async def _deliver(
    log: RedisEventLog | MemoryEventLog,
    append: Callable[[], Awaitable[None]],
    rechecks: Rechecks,
) -> tuple[int, int, bytes]:
    """Opens an idle stream, lets it through two re-checks, then awaits `append`; the
    re-checks counted once it returned, and at the event's arrival, and the event."""
    found: list[tuple[int, bytes]] = []
    arrived = asyncio.Event()
    body = stream(log, CONVERSATION, None, keepalive_s=3600, still_allowed=rechecks)
    sending = asyncio.create_task(_ids(body, found, rechecks, arrived))
    try:
        async with asyncio.timeout(30):
            await rechecks.second.wait()
            await append()
            at_append = rechecks.count
            await arrived.wait()
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await body.aclose()  # type: ignore[attr-defined]
    ((arrived_at, chunk),) = found
    return at_append, arrived_at, chunk


@pytest.mark.redis
async def test_an_event_whose_wake_up_was_missed_comes_within_a_recheck(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up of another worker's append never reaches this worker (its subscription
    missed it): the stream, not woken, finds the event at its next look at the log's newest
    id, and reads it then."""
    monkeypatch.setattr(events, "RECHECK_S", 0.05)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    # This worker's log never subscribes: every wake-up of the other's appends is missed.
    here = RedisEventLog(clients[0], key_prefix, kept=100, ttl_s=60)
    there = RedisEventLog(clients[1], key_prefix, kept=100, ttl_s=60)
    try:

        async def append() -> None:
            await there.append(CONVERSATION, [("answer", {"text": "unannounced"})])

        at_append, arrived, chunk = await _deliver(here, append, Rechecks())
    finally:
        await clients[0].delete(
            support_events(key_prefix, CONVERSATION), support_answered(key_prefix, CONVERSATION)
        )
        for client in clients:
            await client.aclose()
    assert b"unannounced" in chunk
    # The re-check under way when it landed saw it, or missed it and the next one sees it.
    assert arrived <= at_append + 1


async def test_an_event_appended_after_the_look_at_the_log_is_sent_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An append that lands after the re-check's look at the newest id (which then showed
    nothing new) wakes the stream: it is read in that same pass, not a re-check later."""
    monkeypatch.setattr(events, "RECHECK_S", 0.05)
    log = CountedMemoryLog(kept=100, ttl_s=60)
    rechecks = Rechecks()
    appended_at: list[int] = []
    appended = asyncio.Event()

    async def in_between() -> None:
        appended_at.append(rechecks.count)
        await log.append(CONVERSATION, [("answer", {"text": "in between"})])
        appended.set()

    async def append() -> None:
        log.after_latest = in_between
        await appended.wait()  # the next re-check's look appends it

    _, arrived, chunk = await _deliver(log, append, rechecks)
    assert b"in between" in chunk
    assert arrived == appended_at[0]  # no re-check more than the one whose look it followed
