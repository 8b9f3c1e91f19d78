"""The event log's pieces without a server: what a stream takes from a wake-up's events, and
what it must read from the log instead; the in-memory log's ids and resumption."""

from __future__ import annotations

from adapters.support.events import Event, MemoryEventLog, Outbox, Waiter, valid_event_id


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
