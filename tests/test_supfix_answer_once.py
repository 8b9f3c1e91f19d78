"""One `answer` event per answered message, even when an attempt's `answer` landed in the event
log but the attempt did not know it: an append that timed out (Redis slower than its socket
timeout) but reached Redis, or a worker killed after its answer landed and before the core
recorded it. The next attempt finds that answer (its key was noted with the core's delivery
before it was sent) and the core records it; the model is not asked again and no second
`answer` is appended. Real PostgreSQL and Redis, the real support adapter over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.support.events import (
    ANSWER_FIELD,
    AlreadyAnswered,
    AlreadyNoticed,
    EventLog,
    MemoryEventLog,
    RedisEventLog,
)
from backends.base import GenerationRequest
from bot import phrases
from bot.conversation.sink import current_shown
from bot.errors import BackendUnavailable, StorageError
from bot.storage import migrate
from bot.storage.keys import support_answered
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    Worker,
    bearer,
    data,
    last_user_text,
    new_visitor,
    open_stream,
    support_worker,
)

pytestmark = pytest.mark.redis

# The sweep runs a turn left pending again soon.
QUICK_SWEEP = {"sweep_interval_s": 0.2, "orphan_after_s": 0.2}


def answer(request: GenerationRequest) -> str:
    return "re:" + last_user_text(request)


def unavailable(request: GenerationRequest) -> str:
    raise BackendUnavailable("down")


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> ScriptedBackend:
    """Answers with `answer`, or with what a test names (parametrized indirectly)."""
    return ScriptedBackend(getattr(request, "param", answer))


@pytest.fixture
async def worker(
    postgres_url: str, redis_url: str, key_prefix: str, backend: ScriptedBackend
) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend,
        conversation=QUICK_SWEEP,
    ) as w:  # fmt: skip
        yield w


@pytest.fixture
async def busy_worker(
    postgres_url: str, redis_url: str, key_prefix: str, backend: ScriptedBackend
) -> AsyncIterator[Worker]:
    """A worker keeping few events per conversation (MAXLEN ~ 10: Redis trims whole nodes
    of 100 entries)."""
    await migrate.upgrade(postgres_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend,
        conversation=QUICK_SWEEP, events_kept=10,
    ) as w:  # fmt: skip
        yield w


async def post(client: httpx.AsyncClient, token: str, text: str) -> str:
    posted = await client.post("/v1/messages", headers=bearer(token), json={"text": text})
    assert posted.status_code == 202, posted.text
    message_id: str = posted.json()["message_id"]
    return message_id


async def said(client: httpx.AsyncClient, token: str) -> list[tuple[str, str]]:
    response = await client.get("/v1/history", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [(m["role"], m["text"]) for m in response.json()["messages"]]


async def test_an_answer_whose_append_timed_out_but_landed_is_not_answered_again(
    worker: Worker, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chaos review: Redis held the append of an `answer` past the client's socket timeout,
    then ran it. The turn, left pending, was run again merged with the visitor's newer
    messages, and its answer (to all three, under the newest's reply_to) was a second answer
    to the first question: the visitor saw it answered twice."""
    log = worker.adapter.events
    real = log.append
    held, go = asyncio.Event(), asyncio.Event()

    async def slow(conversation: str, events: Sequence[tuple[str, Any]], **kw: Any) -> None:
        if any(name == "answer" for name, _ in events) and not held.is_set():
            held.set()
            await go.wait()  # Redis holds the request ...
            await real(conversation, events, **kw)  # ... and runs it, after the client gave up
            raise RedisTimeoutError("Timeout reading from socket")
        await real(conversation, events, **kw)

    monkeypatch.setattr(log, "append", slow)
    site = await worker.add_site("shop")
    async with worker.client() as client:
        token = (await new_visitor(client, site))["token"]
        async with open_stream(client, token, last_event_id="0") as stream:
            first = await post(client, token, "q1")
            async with asyncio.timeout(30):
                await held.wait()
            await post(client, token, "q2")  # sent while the answer to q1 was on its way
            newest = await post(client, token, "q3")
            go.set()
            events = await stream.until_answers(2)
            await worker.adapter.idle()
        history = await said(client, token)
    answers = [data(e) for e in events if e.event == "answer"]
    assert answers == [
        {"reply_to": first, "text": "re:q1", "sources": []},
        {"reply_to": newest, "text": "re:q2\n\nq3", "sources": []},
    ]
    # Recorded after the messages sent while it was on its way, as the history lists it.
    assert history == [
        ("user", "q1"),
        ("user", "q2"),
        ("user", "q3"),
        ("assistant", "re:q1"),
        ("assistant", "re:q2\n\nq3"),
    ]
    assert [last_user_text(r) for r in backend.requests] == ["q1", "q2\n\nq3"]


async def test_a_worker_killed_after_its_answer_landed_leaves_no_second_answer(
    worker: Worker, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chaos review: `kill -9` of a worker within 100 ms of an answer's end (its `answer`
    appended, not yet recorded in SQL) gave a second `answer` to the same message, by the
    worker that finished the delivery. The turn's task ending where the worker died (no
    handler runs, its delivery stays unrecorded) stands for the kill."""
    # The worker dies there: nothing after it runs.
    killed = _fails_once_after_an_answer(worker, monkeypatch, asyncio.CancelledError())
    site = await worker.add_site("shop")
    async with worker.client() as client:
        token = (await new_visitor(client, site))["token"]
        first = await post(client, token, "q1")
        async with asyncio.timeout(30):
            await killed.wait()
        async with open_stream(client, token, last_event_id="0") as stream:
            # The delivery left unrecorded is finished first, then the next message answered.
            await post(client, token, "q2")
            events = await stream.until_answers(2)
            await worker.adapter.idle()  # recorded after its events
        history = await said(client, token)
    answers = [data(e) for e in events if e.event == "answer"]
    assert answers[0] == {"reply_to": first, "text": "re:q1", "sources": []}
    assert [a["text"] for a in answers] == ["re:q1", "re:q2"]
    # (q2 may be recorded before the answer to q1 or after it: the history lists them by id.)
    assert [text for role, text in history if role == "user"] == ["q1", "q2"]
    assert [text for role, text in history if role == "assistant"] == ["re:q1", "re:q2"]
    assert [last_user_text(r) for r in backend.requests] == ["q1", "q2"]


async def test_an_answer_whose_key_could_not_be_noted_is_not_answered_twice(
    worker: Worker, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chaos run: PostgreSQL went away as an answer ended. Noting the answer's key failed
    (one warning), the `answer` was appended all the same, the worker was stopped before the
    answer was recorded, and the worker that finished the delivery, finding no key, appended
    a second `answer` to the same message. An answer whose key is not in SQL is not sent."""
    store = worker.app.store
    real_note = store.note_delivery
    refused = asyncio.Event()

    async def note(conversation_id: int, epoch: int, shown: dict[int, str | int]) -> None:
        if not refused.is_set():  # the database is out of reach for this one write
            refused.set()
            raise StorageError("database error: ConnectionRefusedError")
        await real_note(conversation_id, epoch, shown)

    monkeypatch.setattr(store, "note_delivery", note)
    _fails_once_after_an_answer(worker, monkeypatch, asyncio.CancelledError())  # it stops
    first, answers, history = await _q1_then_q2(worker, refused)
    replied = [a["reply_to"] for a in answers]
    assert len(replied) == len(set(replied)), answers  # no message answered twice
    assert [a["text"] for a in answers].count("re:q1") <= 1, answers
    assert first in replied or any("q1" in a["text"] for a in answers)
    assert [text for role, text in history if role == "user"] == ["q1", "q2"]
    assert len([text for role, text in history if role == "assistant"]) == len(answers)


async def test_an_answer_out_is_recorded_whole_when_sql_went_away_after_it(
    worker: Worker, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chaos run: PostgreSQL went away right after an `answer` landed, so the check whether
    its visitor was erased meanwhile failed; the core took that for a delivery cut short and
    recorded "[The reply was cut off.]" after the whole answer the visitor had seen. The
    next attempt records the answer as it landed, as after a worker killed at that point."""
    failed = _fails_once_after_an_answer(
        worker, monkeypatch, StorageError("database error: ConnectionRefusedError")
    )
    first, answers, history = await _q1_then_q2(worker, failed)
    assert answers[0] == {"reply_to": first, "text": "re:q1", "sources": []}
    assert [a["text"] for a in answers] == ["re:q1", "re:q2"]
    assert [text for role, text in history if role == "assistant"] == ["re:q1", "re:q2"]
    assert [last_user_text(r) for r in backend.requests] == ["q1", "q2"]


def _fails_once_after_an_answer(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> asyncio.Event:
    """The first "erased meanwhile?" check after an answer went out raises `error` (a
    CancelledError: the worker dies there; a StorageError: SQL went away); the event is set
    then."""
    api = worker.adapter.api
    real, failed = api.erased_meanwhile, asyncio.Event()

    async def once(*args: Any, **kw: Any) -> bool:
        if current_shown() is not None and not failed.is_set():  # after an answer
            failed.set()
            raise error
        return await real(*args, **kw)

    monkeypatch.setattr(api, "erased_meanwhile", once)
    return failed


async def _q1_then_q2(
    worker: Worker, fault: asyncio.Event
) -> tuple[str, list[dict[str, Any]], list[tuple[str, str]]]:
    """A visitor asks "q1" and, once `fault` is set, "q2", a stream open throughout: the id
    of q1, the data of the `answer` events of both, and the history once both are recorded."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        token = (await new_visitor(client, site))["token"]
        async with open_stream(client, token, last_event_id="0") as stream:
            first = await post(client, token, "q1")
            async with asyncio.timeout(30):
                await fault.wait()
            await post(client, token, "q2")
            events = await stream.until_answers(2)
            await worker.adapter.idle()
        history = await said(client, token)
    return first, [data(e) for e in events if e.event == "answer"], history


@pytest.fixture(params=["memory", "redis"])
async def event_log(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str
) -> AsyncIterator[EventLog]:
    if request.param == "memory":
        yield MemoryEventLog(kept=100, ttl_s=60)
        return
    client = Redis.from_url(redis_url)
    log = RedisEventLog(client, key_prefix, kept=100, ttl_s=60)
    await log.start()
    try:
        yield log
    finally:
        await log.erase("shop:v_1")
        await log.aclose()
        await client.aclose()


def names(events: Sequence[Any]) -> list[str]:
    return [e.name for e in events]


async def test_an_append_under_an_answered_key_is_refused_whole(event_log: EventLog) -> None:
    delta: Mapping[str, Any] = {"reply_to": "1", "text": "Hi", "first": True}
    final: Mapping[str, Any] = {"reply_to": "1", "text": "Hi", "sources": []}
    await event_log.append("shop:v_1", [("delta", delta)], once="k1")  # not answered yet
    assert await event_log.answered("shop:v_1", "k1") is None
    await event_log.append("shop:v_1", [("delta", delta), ("answer", final)], once="k1")
    landed = await event_log.answered("shop:v_1", "k1")
    assert landed is not None and landed.name == "answer"
    with pytest.raises(AlreadyAnswered):  # a second attempt at the same answer
        await event_log.append("shop:v_1", [("delta", delta), ("answer", final)], once="k1")
    await event_log.append("shop:v_1", [("answer", final)], once="k2")  # another answer
    await event_log.append("shop:v_1", [("message", {"id": "2"})])  # no key: as before
    assert names(await event_log.read("shop:v_1", None)) == [
        "delta", "delta", "answer", "answer", "message"
    ]  # fmt: skip
    await event_log.erase("shop:v_1")
    assert await event_log.answered("shop:v_1", "k1") is None
    await event_log.append("shop:v_1", [("answer", final)], once="k1")  # its keys went too


async def test_an_answer_trimmed_out_of_the_log_is_still_known(event_log: EventLog) -> None:
    """A review: `answered` looked the `answer` event up in the stream, and a conversation
    busy enough for MAXLEN to trim past it lost it: its key was dropped, the model asked
    again, and a live client got a second `answer`. The event is kept with its key."""
    final: Mapping[str, Any] = {"reply_to": "1", "text": "Hi ✓", "sources": []}
    await event_log.append("shop:v_1", [("answer", final)], once="k1")
    appended = (await event_log.read("shop:v_1", None))[0]
    for _ in range(4):  # 400 events after it, past the 100 kept
        await event_log.append("shop:v_1", [("message", {"id": str(i)}) for i in range(100)])
    assert "answer" not in names(await event_log.read("shop:v_1", None))  # trimmed
    assert await event_log.answered("shop:v_1", "k1") == appended
    with pytest.raises(AlreadyAnswered):
        await event_log.append("shop:v_1", [("answer", final)], once="k1")
    await event_log.erase("shop:v_1")
    assert await event_log.answered("shop:v_1", "k1") is None


async def test_a_notice_is_not_appended_twice_under_one_key(event_log: EventLog) -> None:
    """A review: `notice` events carried no key, so a notice whose append timed out but landed
    was followed by the same notice again when its turn ran again. The same notice under the
    same key is refused; another notice, or an answer, under it is not (the model may answer
    by then), and a notice does not make the key answered."""
    busy: Mapping[str, Any] = {"text": "busy"}
    await event_log.append("shop:v_1", [("notice", busy)], once="k1")
    with pytest.raises(AlreadyNoticed):
        await event_log.append("shop:v_1", [("notice", busy)], once="k1")
    await event_log.append("shop:v_1", [("notice", busy)], once="k2")  # another delivery's
    await event_log.append("shop:v_1", [("notice", busy)])  # no key: as before
    await event_log.append("shop:v_1", [("notice", {"text": "down"})], once="k1")
    assert await event_log.answered("shop:v_1", "k1") is None
    final: Mapping[str, Any] = {"reply_to": "1", "text": "Hi", "sources": []}
    await event_log.append("shop:v_1", [("answer", final)], once="k1")
    with pytest.raises(AlreadyAnswered):  # once answered, no notice either
        await event_log.append("shop:v_1", [("notice", {"text": "late"})], once="k1")
    assert names(await event_log.read("shop:v_1", None)) == [
        "notice", "notice", "notice", "notice", "answer"
    ]  # fmt: skip


async def test_an_answer_trimmed_out_of_the_log_before_its_next_attempt_is_not_repeated(
    busy_worker: Worker, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter over the trimmed log: the `answer` of an append that timed out but landed
    is trimmed away by the events after it (events_kept) before the turn runs again; the next
    attempt records it all the same, and no second `answer` is sent."""
    log = busy_worker.adapter.events
    real = log.append
    landed, kept = asyncio.Event(), list[str]()

    async def slow(conversation: str, events: Sequence[tuple[str, Any]], **kw: Any) -> None:
        await real(conversation, events, **kw)
        if any(name == "answer" for name, _ in events) and not landed.is_set():
            for _ in range(3):  # a busy conversation: its `answer` is trimmed away
                padding = [("padding", {"n": i}) for i in range(100)]
                await real(conversation, padding)
            kept.extend(names(await log.read(conversation, None)))
            landed.set()
            raise RedisTimeoutError("Timeout reading from socket")  # after Redis ran it

    monkeypatch.setattr(log, "append", slow)
    site = await busy_worker.add_site("shop")
    async with busy_worker.client() as client:
        token = (await new_visitor(client, site))["token"]
        async with open_stream(client, token, last_event_id="0") as stream:
            first = await post(client, token, "q1")
            async with asyncio.timeout(30):
                await landed.wait()
            assert "answer" not in kept  # trimmed away
            second = await post(client, token, "q2")
            events = await stream.until_answers(2)
            await busy_worker.adapter.idle()
        history = await said(client, token)
    answers = [data(e) for e in events if e.event == "answer"]
    assert answers == [
        {"reply_to": first, "text": "re:q1", "sources": []},
        {"reply_to": second, "text": "re:q2", "sources": []},
    ]
    assert [text for role, text in history if role == "assistant"] == ["re:q1", "re:q2"]
    assert [last_user_text(r) for r in backend.requests] == ["q1", "q2"]


@pytest.mark.parametrize("backend", [unavailable], indirect=True)
async def test_a_notice_whose_append_timed_out_but_landed_is_not_sent_again(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review: the model unavailable, its notice's append timed out after Redis ran it; the
    turn, left pending, ran again and appended the same notice a second time."""
    log = worker.adapter.events
    real = log.append
    notices, again = 0, asyncio.Event()

    async def slow(conversation: str, events: Sequence[tuple[str, Any]], **kw: Any) -> None:
        nonlocal notices
        notice = any(name == "notice" for name, _ in events)
        notices += notice
        try:
            await real(conversation, events, **kw)
        finally:
            if notice and notices == 2:
                again.set()  # the turn ran again
        if notice and notices == 1:
            raise RedisTimeoutError("Timeout reading from socket")  # after Redis ran it

    monkeypatch.setattr(log, "append", slow)
    site = await worker.add_site("shop")
    async with worker.client() as client:
        token = (await new_visitor(client, site))["token"]
        async with open_stream(client, token, last_event_id="0") as stream:
            await post(client, token, "q1")
            async with asyncio.timeout(30):
                await again.wait()
            await worker.adapter.idle()  # and recorded its notice
            await post(client, token, "q2")  # its own notice follows q2's `message` event
            events = await stream.until_answers(2)
            await worker.adapter.idle()
        history = await said(client, token)
    shown = [(e.event, data(e).get("text")) for e in events if e.event in ("message", "notice")]
    assert shown == [
        ("message", "q1"),
        ("notice", phrases.UNAVAILABLE),
        ("message", "q2"),
        ("notice", phrases.UNAVAILABLE),
    ]
    assert history == [
        ("user", "q1"),
        ("notice", phrases.UNAVAILABLE),
        ("user", "q2"),
        ("notice", phrases.UNAVAILABLE),
    ]


async def test_an_answer_key_noted_by_an_earlier_release_is_read_from_the_stream(
    redis_url: str, key_prefix: str
) -> None:
    """An earlier release kept the `answer` event's id alone with its key: that event is read
    from the stream, and once trimmed away the key is dropped (the next attempt answers)."""
    client = Redis.from_url(redis_url)
    log = RedisEventLog(client, key_prefix, kept=100, ttl_s=60)
    final: Mapping[str, Any] = {"reply_to": "1", "text": "Hi", "sources": []}
    try:
        await log.append("shop:v_1", [("answer", final)], once="k1")
        await client.hdel(support_answered(key_prefix, "shop:v_1"), f"k1{ANSWER_FIELD}")
        assert await log.answered("shop:v_1", "k1") == (await log.read("shop:v_1", None))[0]
        for _ in range(4):
            await log.append("shop:v_1", [("message", {"id": str(i)}) for i in range(100)])
        assert await log.answered("shop:v_1", "k1") is None
        await log.append("shop:v_1", [("answer", final)], once="k1")
    finally:
        await log.erase("shop:v_1")
        await client.aclose()
