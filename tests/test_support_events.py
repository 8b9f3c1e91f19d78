"""The event log's pieces without a server: what a stream takes from a wake-up's events, and
what it must read from the log instead; the in-memory log's ids and resumption."""

from __future__ import annotations

from adapters.support.events import Event, MemoryEventLog, Outbox, Waiter, valid_event_id


async def _still_allowed() -> bool:
    """The caller's credentials never lapse in these tests."""
    return True


def _events(*ids: str) -> list[Event]:
    return [Event(i, "delta", f'{{"text": "{i}"}}') for i in ids]


def test_carried_events_that_follow_on_are_taken_without_a_read() -> None:
    waiter = Waiter()
    waiter.offer("5-0", _events("6-0", "6-1"))
    waiter.offer("6-1", _events("7-0"))
    assert [e.id for e in waiter.take("5-0") or []] == ["6-0", "6-1", "7-0"]
    assert waiter.take("7-0") is None  # nothing carried: read the log


def test_a_gap_or_an_unknown_start_means_reading_the_log() -> None:
    waiter = Waiter()
    waiter.offer("6-1", _events("7-0"))  # 6-0 and 6-1 were never seen by this stream
    assert waiter.take("5-0") is None
    assert waiter.batches == []


def test_events_already_sent_are_not_sent_again() -> None:
    waiter = Waiter()
    waiter.offer("5-0", _events("6-0", "6-1", "6-2"))  # the stream read up to 6-1 meanwhile
    waiter.offer("4-0", _events("5-0"))
    assert [e.id for e in waiter.take("6-1") or []] == ["6-2"]


def test_event_ids_are_checked_like_redis_stream_ids() -> None:
    assert valid_event_id("1733000000000-0")
    assert not valid_event_id("99999999999999999999-0")  # over 64 bits
    assert not valid_event_id("12")
    assert not valid_event_id("1-2-3")


async def test_the_memory_log_resumes_after_an_id_and_merges_an_answers_deltas() -> None:
    log = MemoryEventLog(kept=100, ttl_s=60)
    outbox = Outbox(log, "shop:v_1")
    outbox.put("delta", {"reply_to": "1", "text": "Hel"})
    outbox.put("delta", {"reply_to": "1", "text": "lo"})
    outbox.put("answer", {"reply_to": "1", "text": "Hello", "sources": []})
    await outbox.close()
    events = await log.read("shop:v_1", None)
    texts = [(e.name, e.data) for e in events]
    assert texts[-1] == ("answer", '{"reply_to": "1", "text": "Hello", "sources": []}')
    assert "".join(e.data.split('"text": "')[1].split('"')[0] for e in events[:-1]) == "Hello"
    assert await log.read("shop:v_1", events[0].id) == events[1:]
    assert await log.latest("shop:v_1") == events[-1].id
    await log.erase("shop:v_1")
    assert await log.read("shop:v_1", None) == []


async def _first_events(body: object, count: int) -> list[bytes]:
    got: list[bytes] = []
    async for chunk in body:  # type: ignore[attr-defined]
        if chunk.startswith(b"id: "):
            got.append(chunk)
            if len(got) == count:
                return got
    return got


async def test_a_stream_on_the_appending_worker_gets_the_events_without_the_subscription(
    redis_url: str, key_prefix: str
) -> None:
    """Two workers on one Redis: the appending worker's own stream takes the events from the
    append itself (its own wake-ups from the subscription are skipped), the other worker's
    from the subscription; each exactly once, in order."""
    import asyncio

    import redis.asyncio as aioredis

    from adapters.support.events import RedisEventLog, stream

    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    logs = [RedisEventLog(c, key_prefix, kept=100, ttl_s=60) for c in clients]
    try:
        for log in logs:
            await log.start()
        await logs[0].append("shop:v_9", [("delta", {"text": "Hel"})])
        here = stream(logs[0], "shop:v_9", "0-0", keepalive_s=30, still_allowed=_still_allowed)
        there = stream(logs[1], "shop:v_9", "0-0", keepalive_s=30, still_allowed=_still_allowed)
        async with asyncio.timeout(10):
            first = [await _first_events(s, 1) for s in (here, there)]
        assert first[0] == first[1] and b"Hel" in first[0][0]
        # Both streams wait now: only a wake-up brings the next event.
        got = [asyncio.create_task(_first_events(s, 1)) for s in (here, there)]
        await logs[0].append("shop:v_9", [("answer", {"text": "Hello"})])
        async with asyncio.timeout(10):
            mine, theirs = [await task for task in got]
        assert mine == theirs and b"event: answer" in mine[0]
    finally:
        for log, client in zip(logs, clients, strict=True):
            await log.aclose()
            await client.delete(f"{key_prefix}:support:events:shop:v_9")
            await client.aclose()


async def test_a_last_event_id_past_the_newest_does_not_silence_the_stream(
    redis_url: str, key_prefix: str
) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from adapters.support.events import RedisEventLog, stream

    client = aioredis.Redis.from_url(redis_url)
    log = RedisEventLog(client, key_prefix, kept=100, ttl_s=60)
    try:
        await log.start()
        await log.append("shop:v_8", [("answer", {"text": "earlier"})])
        future = f"{2**63}-0"  # a made-up id, far past anything the log holds
        body = stream(log, "shop:v_8", future, keepalive_s=30, still_allowed=_still_allowed)
        waiting = asyncio.create_task(_first_events(body, 1))
        async with asyncio.timeout(10):
            while not waiting.done():  # until the stream is open and takes one
                await log.append("shop:v_8", [("answer", {"text": "later"})])
                await asyncio.wait([waiting], timeout=0.05)
        (event,) = waiting.result()
        assert b"later" in event and b"earlier" not in event
    finally:
        await log.aclose()
        await client.delete(f"{key_prefix}:support:events:shop:v_8")
        await client.aclose()
