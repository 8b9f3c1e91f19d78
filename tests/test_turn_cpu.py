"""Parley's own CPU per turn (issue 19): work a turn need not do, counted, not timed.

bench.turn_profile measures the CPU; these tests pin down what was taken out of it, through
public hooks, so that it does not come back unnoticed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from bot.app import Parley
from bot.settings import Settings
from bot.storage.base import MessageKind
from bot.storage.database import create_engine
from bot.storage.migrate import upgrade
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink, ScriptedBackend


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


@contextmanager
def session_transactions() -> Iterator[list[Any]]:
    """Each ORM session transaction begun on a connection (SQLAlchemy's after_begin event)."""
    begun: list[Any] = []

    def on_begin(_session: Any, transaction: Any, _connection: Any) -> None:
        begun.append(transaction)

    event.listen(Session, "after_begin", on_begin)
    try:
        yield begun
    finally:
        event.remove(Session, "after_begin", on_begin)


async def test_a_turns_store_calls_keep_no_session_books(store: SqlStore) -> None:
    """A store call runs its statements on the engine's connection: no ORM session
    transaction, identity-map snapshot and session close around them (about 50 us of CPU a
    call, five calls a turn), as each call had before. What it writes is still committed."""
    key = ConversationKey("console", "cpu")
    incoming = Incoming(key, User("console", "u-cpu"), "hello", "cpu-1")
    with session_transactions() as begun:
        recorded = await store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=1)
        cid, mid = recorded.conversation_id, recorded.message_id
        async with store.turn_lease(cid, "worker-a", ttl_s=10, wait_s=1) as lease:
            assert await store.begin_delivery(lease, cid, mid, mid)
            reply = await store.record_reply(
                cid, [mid], "hi", kind=MessageKind.CHAT, token_count=1, epoch=lease.epoch
            )
        assert reply is not None
        assert list(await store.pending(cid, 10)) == []
    assert begun == []


class ProbedSink(CollectingSink):
    """A sink that declares none of the optional protocols, and notes each attribute looked up
    on it that it does not have (how isinstance against a runtime-checkable protocol probes)."""

    def __init__(self) -> None:
        super().__init__()
        self.probed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.probed.append(name)
        raise AttributeError(name)


async def test_a_turn_does_not_probe_its_sink_for_what_it_declares(tmp_path: Path) -> None:
    """What a sink declares (bot.conversation.sink: Reachable, SiteScoped, TellsDeletions...)
    is read once, when it is attached, not by isinstance checks at every turn (7-28 us each,
    about nine a turn)."""
    key = ConversationKey("test", "probed")
    settings = Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"})  # type: ignore[arg-type]
    async with Parley(settings, backend=ScriptedBackend()) as app:  # type: ignore[arg-type]
        sink = ProbedSink()
        app.manager.attach("test", sink)
        sink.probed.clear()
        for n in range(3):
            incoming = Incoming(key, User("test", "u1"), f"question {n}", f"probed-{n}")
            await app.manager.handle(incoming)
        assert sink.replies[key] == [f"echo: question {n}" for n in range(3)]
        assert sink.probed == []
