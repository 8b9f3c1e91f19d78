"""The lease's first page of pending messages (commits 0e05c79, 4497769), under review.

On PostgreSQL the lease's take returns the first page of pending messages in the same
statement (and snapshot) as the lease, its unfinished delivery and the conversation's state;
on SQLite the page is a second statement in the take's transaction. These tests hold what
that must keep:

1. A take that waited for the conversation row while a worker whose lease lapsed recorded
   its fenced answer is tried again (the `xmin` guard), so its page never holds a message
   that answer settled.
2. More than a page pending: the lease's page, then `Store.pending`, each message answered
   once, in order.
3. A message recorded by this process after the take (not in the page) is answered by the
   next lease (`_again`).
4. A dead worker's unfinished delivery is finished from the lease's page, then the rest.
5. A take asked for no page is one statement in autocommit on PostgreSQL, as before the
   change (it failed on 0e05c79: BEGIN, UPDATE, COMMIT).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import event

import bot.conversation.manager as manager_module
from bot.app import Parley
from bot.settings import Settings
from bot.storage.base import MessageKind, Store, StoredMessage
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend
from tests.test_conversation import GatedBackend
from tests.test_turn_path_races import reply_while_taking

KEY = ConversationKey("test", "page-chat")
ALICE = User("test", "u-1", "Alice")
CHAT = MessageKind.CHAT


def incoming(ikey: str, text: str) -> Incoming:
    return Incoming(key=KEY, user=ALICE, text=text, idempotency_key=ikey)


async def ask(store: Store, ikey: str, text: str) -> tuple[int, int]:
    recorded = await store.record_incoming(incoming(ikey, text), kind=CHAT, token_count=3)
    return recorded.conversation_id, recorded.message_id


@pytest.mark.postgres
async def test_a_page_never_holds_a_message_answered_while_the_take_waited(
    pg_stores: tuple[SqlStore, SqlStore, str],
) -> None:
    worker_a, worker_b, url = pg_stores
    cid, first = await ask(worker_a, "q1", "first question")
    _, second = await ask(worker_a, "q2", "second question")
    async with worker_a.turn_lease(cid, "worker-a", ttl_s=30, wait_s=1) as lease:
        assert await worker_a.begin_delivery(lease, cid, first, first)
        epoch_a = lease.epoch

    # A's lease is gone while its answer to `first` is still on its way.
    def answer() -> Awaitable[StoredMessage | None]:
        return worker_a.record_reply(
            cid, [first], "first answer", kind=CHAT, token_count=2, epoch=epoch_a
        )

    async def take() -> tuple[list[int] | None, int | None, object]:
        async with worker_b.turn_lease(
            cid, "worker-b", ttl_s=30, wait_s=5, pending_limit=10
        ) as taken:
            page = None if taken.pending is None else [m.id for m in taken.pending]
            last = None if taken.state is None else taken.state.last_reply_id
            return page, last, taken.unfinished

    # A's answer and B's take queue for the row, A first (see reply_while_taking).
    stored, (page, last_reply_id, unfinished) = await reply_while_taking(url, cid, answer, take)
    assert stored is not None  # A's answer went in first
    assert page == [second]  # not `first`: answered before B held the lease
    assert last_reply_id == stored.id  # the same snapshot as the page
    assert unfinished is None  # A's answer ended its delivery
    assert [m.id for m in await worker_b.pending(cid, 10)] == [second]


@pytest.mark.postgres
async def test_a_take_without_a_page_is_one_statement_in_autocommit(
    pg_stores: tuple[SqlStore, SqlStore, str],
) -> None:
    store, _, _ = pg_stores
    cid, _ = await ask(store, "q1", "hello")
    statements: list[str] = []
    commits: list[int] = []

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    def on_commit(_conn: Any) -> None:
        commits.append(1)

    engine = store.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    try:
        async with store.turn_lease(cid, "worker-a", ttl_s=60, wait_s=1, pending_limit=5):
            with_page = (list(statements), len(commits))
        statements.clear()
        commits.clear()
        async with store.turn_lease(cid, "worker-a", ttl_s=60, wait_s=1):
            plain = (list(statements), len(commits))
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "commit", on_commit)
    assert with_page == (["WITH"], 0)
    # One UPDATE ... RETURNING in autocommit, as before 0e05c79: no COMMIT round trip.
    assert plain == (["UPDATE"], 0)


def settings_for(database_url: str, **conversation: object) -> Settings:
    return Settings(
        database={"url": database_url},  # type: ignore[arg-type]
        conversation={"sweep_interval_s": 0, "burst": "queue", **conversation},  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(
    settings: Settings, backend: object
) -> AsyncIterator[tuple[Parley, CollectingSink]]:
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        yield app, CollectingSink()


async def answers(store: Store, cid: int) -> list[tuple[str, int | None]]:
    """Each user message with the reply that answered it, oldest first."""
    rows = await store.history(cid, 100)
    return [(m.content, m.answered_by) for m in rows if m.role is Role.USER]


async def test_more_than_a_page_pending_is_answered_once_each_in_order(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_module, "PENDING_PAGE", 2)
    texts = [f"m{i}" for i in range(5)]
    async with running(settings_for(database_url), ScriptedBackend()) as (app, sink):
        cid = 0
        for i, text in enumerate(texts):  # recorded, not scheduled: nothing serves "test" yet
            cid, _ = await ask(app.store, f"k{i}", text)
        app.manager.attach("test", sink)
        assert await app.manager.recover() == 1
        await app.manager.wait_idle()
        assert sink.replies[KEY] == [f"echo: {text}" for text in texts]
        assert await app.store.pending(cid, 10) == []
        answered = await answers(app.store, cid)
    assert [text for text, _ in answered] == texts
    reply_ids = [reply for _, reply in answered]
    assert None not in reply_ids and len(set(reply_ids)) == len(texts)  # one answer each


async def test_a_message_recorded_after_the_take_is_answered_by_the_next_lease(
    database_url: str,
) -> None:
    backend = GatedBackend()
    async with running(settings_for(database_url), backend) as (app, sink):
        app.manager.attach("test", sink)
        first = await app.manager.submit(incoming("k1", "one"))
        await backend.entered.wait()  # the lease and its page (["one"]) are taken
        await app.manager.submit(incoming("k2", "two"))
        backend.gate.set()
        await app.manager.wait_idle(first.conversation_id)
        assert sink.replies[KEY] == ["echo: one", "echo: two"]
        assert await app.store.pending(first.conversation_id, 10) == []


async def test_a_dead_workers_delivery_is_finished_from_the_page_then_the_rest(
    database_url: str,
) -> None:
    settings = settings_for(database_url, delivery_grace_s=0.05)
    async with running(settings, ScriptedBackend()) as (app, sink):
        store = app.store
        cid, first = await ask(store, "k1", "one")
        await ask(store, "k2", "two")
        async with store.turn_lease(cid, "dead-worker", ttl_s=30, wait_s=1) as lease:
            assert await store.begin_delivery(lease, cid, first, first)
            await store.note_delivery(cid, lease.epoch, {0: "piece-0"})
        await asyncio.sleep(0.2)  # its SQL heartbeat is older than the grace now
        app.manager.attach("test", sink)
        assert await app.manager.recover() == 1
        await app.manager.wait_idle()
        assert sink.replies[KEY] == ["echo: one", "echo: two"]
        assert await store.delivery(cid) is None
        assert await store.pending(cid, 10) == []
        answered = await answers(store, cid)
    assert [text for text, _ in answered] == ["one", "two"]
    assert len({reply for _, reply in answered if reply}) == 2
