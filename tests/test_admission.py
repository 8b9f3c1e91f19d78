"""Places on the store's connections (bot.storage.runners.Admission): an answer whose first
piece waits on `begin_delivery` goes before a burst of other turns' statements, and on SQLite
one write runs at a time, queued here rather than in SQLite's sleeping busy handler.

The store-level tests fail on the pool's own first-come queue: there `begin_delivery` came
back after every message of the burst was recorded (bench.discord_bench: the first visible
update of 50 channels answering at once, p99 92-180 ms before, 5 ms after)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.storage.base import MessageKind
from bot.storage.database import create_engine, run_on_connection
from bot.storage.migrate import upgrade
from bot.storage.runners import Admission
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User

BURST = 30


async def _admitted(
    admission: Admission, order: list[str], name: str, *, write: bool, urgent: bool = False
) -> None:
    async with admission.place(write=write, urgent=urgent):
        order.append(name)
        await asyncio.sleep(0)


async def _waiting(tasks: list[asyncio.Task[None]]) -> None:
    """Let each task reach its place in line (or its place)."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(task.done() for task in tasks)


def _holding(admission: Admission, *, write: bool) -> tuple[asyncio.Task[None], asyncio.Event]:
    """A call that holds its place until the event is set."""
    release = asyncio.Event()

    async def hold() -> None:
        async with admission.place(write=write, urgent=False):
            await release.wait()

    return asyncio.create_task(hold()), release


async def _free_at_once(admission: Admission, *, write: bool) -> None:
    """Every place is back: a call of this kind gets one at once."""
    async with asyncio.timeout(1):
        async with admission.place(write=write, urgent=False):
            pass


async def test_urgent_calls_go_first_then_in_order() -> None:
    admission = Admission(1, writers=None, timeout_s=None)
    order: list[str] = []
    first, held = _holding(admission, write=False)
    await asyncio.sleep(0)
    tasks = [
        asyncio.create_task(_admitted(admission, order, name, write=False, urgent=urgent))
        for name, urgent in (("a", False), ("b", False), ("urgent", True), ("c", False))
    ]
    await _waiting(tasks)
    held.set()
    await asyncio.gather(first, *tasks)
    assert order == ["urgent", "a", "b", "c"]


async def test_one_writer_at_a_time_and_reads_pass_a_waiting_write() -> None:
    admission = Admission(3, writers=1, timeout_s=None)
    order: list[str] = []
    writing = asyncio.Event()

    async def writer() -> None:
        async with admission.place(write=True, urgent=False):
            order.append("write 1")
            await writing.wait()

    first = asyncio.create_task(writer())
    await asyncio.sleep(0)
    second = asyncio.create_task(_admitted(admission, order, "write 2", write=True))
    await _waiting([second])
    # A place is free for a read; the waiting write does not hold it back.
    await _admitted(admission, order, "read", write=False)
    assert order == ["write 1", "read"]
    writing.set()
    await asyncio.gather(first, second)
    assert order == ["write 1", "read", "write 2"]


async def test_no_writer_limit_without_one() -> None:
    admission = Admission(2, writers=None, timeout_s=None)
    async with admission.place(write=True, urgent=False):
        async with asyncio.timeout(1):
            async with admission.place(write=True, urgent=False):
                pass


async def test_waiting_past_the_timeout_fails_as_the_pool_does() -> None:
    admission = Admission(1, writers=None, timeout_s=0.05)
    async with admission.place(write=False, urgent=False):
        with pytest.raises(sa_exc.TimeoutError, match="no database connection free within"):
            async with admission.place(write=False, urgent=False):
                pass
    await _free_at_once(admission, write=False)  # the place it waited for is not lost


async def test_a_cancelled_waiter_loses_no_place() -> None:
    admission = Admission(1, writers=1, timeout_s=None)
    order: list[str] = []
    first, held = _holding(admission, write=True)
    await asyncio.sleep(0)
    gone = asyncio.create_task(_admitted(admission, order, "gone", write=True))
    later = asyncio.create_task(_admitted(admission, order, "later", write=True))
    await _waiting([gone, later])
    gone.cancel()
    held.set()
    await asyncio.gather(first, later)
    assert gone.cancelled() and order == ["later"]
    await _free_at_once(admission, write=True)  # the one writer's place too


async def test_admitted_then_cancelled_gives_its_place_back() -> None:
    admission = Admission(1, writers=None, timeout_s=None)
    order: list[str] = []
    async with admission.place(write=False, urgent=False):
        admitted = asyncio.create_task(_admitted(admission, order, "admitted", write=False))
        await _waiting([admitted])
    # The give-back admitted the waiter, which has not run yet, and is cancelled before it does.
    admitted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admitted
    assert order == []
    await _free_at_once(admission, write=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    else:
        url = request.getfixturevalue("postgres_url")
    await upgrade(url)
    each = SqlStore(create_engine(url, pool_size=2))
    await each.start()
    yield each
    await each.aclose()


def _message(chat: str, text: str = "hello") -> Incoming:
    return Incoming(ConversationKey("console", chat), User("console", f"u-{chat}"), text, chat)


async def test_begin_delivery_goes_before_a_burst_of_other_turns(store: SqlStore) -> None:
    recorded = await store.record_incoming(_message("answering"), kind=MessageKind.CHAT,
                                           token_count=1)  # fmt: skip
    cid, mid = recorded.conversation_id, recorded.message_id
    # The order the calls' statements start in is the order they were admitted in: an admitted
    # call's first statement runs before the task it gave its place to runs at all. The order
    # they finish in is not: begin_delivery's UPDATE and the third burst call, admitted when
    # the second place came back, run at once, and either may finish first (CI on a loaded
    # machine saw three messages recorded before begin_delivery came back).
    started: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        words = statement.split(None, 3)
        if words[:3] == ["INSERT", "INTO", "messages"]:
            started.append("recorded")
        elif words[:2] == ["UPDATE", "conversations"] and "delivery_from" in statement:
            started.append("begun")

    async def record(n: int) -> None:
        await store.record_incoming(_message(f"burst-{n}"), kind=MessageKind.CHAT, token_count=1)

    async with store.turn_lease(cid, "worker-a", ttl_s=10, wait_s=1) as lease:
        # Noted from the burst to its end: the lease's statements and end_delivery's are not.
        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", note)
        try:
            burst = [asyncio.create_task(record(n)) for n in range(BURST)]
            await asyncio.sleep(0)  # the burst is in line first
            assert await store.begin_delivery(lease, cid, mid, mid)
            await asyncio.gather(*burst)
        finally:
            sa.event.remove(store.engine.sync_engine, "before_cursor_execute", note)
        await store.end_delivery(cid, lease.epoch, abandon=False)
    assert started.count("begun") == 1 and started.count("recorded") == BURST, started
    # Admitted after at most the two calls that held the pool's places when it came.
    assert started.index("begun") <= 2, started


async def test_the_timeout_counts_only_the_calls_still_waiting() -> None:
    # Calls that gave up (timed out, cancelled) stay in the heap until a give-back pops them;
    # the error an operator reads during an outage must not count them as waiting.
    admission = Admission(1, writers=None, timeout_s=0.01)
    async with admission.place(write=False, urgent=False):
        for _ in range(3):
            with pytest.raises(sa_exc.TimeoutError, match=r"\(1 calls waiting\)"):
                async with admission.place(write=False, urgent=False):
                    pass


async def test_the_repositories_wait_in_the_same_line(tmp_path: Path) -> None:
    """database.run_on_connection (handoff, preferences, usage, knowledge base) takes its
    place in the store's line: an urgent store call goes before a repository's call that came
    first, instead of both queueing again in the pool."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await upgrade(url)
    store = SqlStore(create_engine(url, pool_size=1))
    await store.start()
    try:
        recorded = await store.record_incoming(_message("answering"), kind=MessageKind.CHAT,
                                               token_count=1)  # fmt: skip
        cid, mid = recorded.conversation_id, recorded.message_id
        order: list[str] = []
        holding = asyncio.Event()
        release = asyncio.Event()

        async def hold(conn: AsyncConnection) -> None:
            holding.set()
            await release.wait()

        async def read(conn: AsyncConnection) -> None:
            await conn.execute(sa.text("SELECT 1"))
            order.append("repository")

        async with store.turn_lease(cid, "worker-a", ttl_s=10, wait_s=1) as lease:
            holder = asyncio.create_task(run_on_connection(store.engine, hold))
            await holding.wait()
            repository = asyncio.create_task(run_on_connection(store.engine, read))
            await asyncio.sleep(0.05)  # the repository's call is in line first

            async def begin() -> None:
                assert await store.begin_delivery(lease, cid, mid, mid)
                order.append("begun")

            beginning = asyncio.create_task(begin())
            await asyncio.sleep(0.05)
            release.set()
            await asyncio.gather(holder, repository, beginning)
            await store.end_delivery(cid, lease.epoch, abandon=False)
        assert order == ["begun", "repository"]
    finally:
        await store.aclose()
