"""After PostgreSQL drops the pooled connections (a restart, an administrator), the next call
of every repository on the history's engine succeeds: the dead connection fails its first
statement and the work runs once more on a new one (bot.storage.database.run_on_connection).

There is no pre-ping, so without that retry each such call would fail once per pooled
connection. Real PostgreSQL; the server side of the pool is ended with pg_terminate_backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import date
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.support.sites import SiteStore
from bot.handoff.repo import HandoffRepository, Signal
from bot.handoff.types import HandoffState, Reason
from bot.knowledge import KnowledgeBase, Outcome
from bot.sentiment.types import Label, Sentiment
from bot.storage import migrate
from bot.storage.base import MessageKind
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine, create_relaxed_engine
from bot.storage.prefs import PrefsRepository
from bot.storage.sql_store import SqlStore
from bot.storage.usage import Spent, Subject, UsageLog
from bot.types import ConversationKey, Incoming, User

pytestmark = pytest.mark.postgres

T = TypeVar("T")
KEY = ConversationKey("test", "chat-1")
ADA = User("test", "u1", "Ada")
# Every other server process of this database, waited for (up to 5 s) until it has exited, so
# the next statement meets a connection that is really gone.
TERMINATE = (
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


class Killer:
    """Ends the server side of every pooled connection of the database, from a connection of
    its own."""

    def __init__(self, url: str) -> None:
        self._admin = create_engine(url, pool_size=1)

    async def before(self, call: Awaitable[T]) -> T:
        """`call`'s result, awaited after every pooled connection was killed."""
        async with self._admin.connect() as conn:
            ended = [row[0] for row in (await conn.exec_driver_sql(TERMINATE)).all()]
        assert ended and all(ended), "the pool held no connection to kill"
        return await call

    async def aclose(self) -> None:
        await self._admin.dispose()


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[tuple[AsyncEngine, SqlStore, Killer]]:
    """A migrated database: its engine, a store on it (for the rows the repositories refer
    to) and a killer."""
    await migrate.upgrade(postgres_url)
    engine = create_engine(postgres_url, pool_size=2)
    store, killer = SqlStore(engine), Killer(postgres_url)
    try:
        yield engine, store, killer
    finally:
        await killer.aclose()
        await store.aclose()


async def _message(store: SqlStore, key: str) -> tuple[int, int]:
    recorded = await store.record_incoming(
        Incoming(KEY, ADA, "where is my order?", idempotency_key=key),
        kind=MessageKind.CHAT,
        token_count=5,
    )
    return recorded.conversation_id, recorded.message_id


async def test_handoff_repository_survives_killed_connections(
    db: tuple[AsyncEngine, SqlStore, Killer],
) -> None:
    engine, store, kill = db
    relaxed = create_relaxed_engine(engine, pool_size=1)
    repo = HandoffRepository(engine, MemoryCache(), relaxed=relaxed)
    try:
        cid, mid = await _message(store, "m1")
        signal = Signal(mid, Sentiment(Label.NEGATIVE, 0.9, angry=True), unanswered=True)
        await repo.record_signals(cid, [signal])  # the relaxed pool holds a connection now
        await kill.before(repo.record_signals(cid, [signal]))  # a repeat: the first is kept
        assert (await kill.before(repo.status(cid))).state is HandoffState.BOT
        change = await kill.before(
            repo.change(cid, HandoffState.WAITING, Reason.ASKED, allowed_from=[HandoffState.BOT])
        )
        assert change.after.state is HandoffState.WAITING
        assert [w[0] for w in await kill.before(repo.waiting())] == [cid]
        assert await kill.before(repo.events(cid)) == [("bot", "waiting", "asked", "")]
        found = await kill.before(store.message_by_key("m1"))
        assert found is not None and found.id == mid
        assert await kill.before(repo.recent_signals(cid, 5)) == [signal]
        assert await kill.before(store.unanswered_questions(cid, 5)) == ["where is my order?"]
    finally:
        await relaxed.dispose()


async def test_prefs_repository_survives_killed_connections(
    db: tuple[AsyncEngine, SqlStore, Killer],
) -> None:
    engine, store, kill = db
    prefs = PrefsRepository(engine, store, MemoryCache())
    cid, mid = await _message(store, "m1")
    user_ref = (await prefs.for_message(mid)).user_ref
    assert user_ref is not None
    await kill.before(prefs.set_language(user_ref, "de"))
    await kill.before(prefs.set_auto_translate(cid, "fr"))
    await kill.before(prefs.remember_reply_to(mid, "the order"))
    assert await kill.before(prefs.chat(cid)) == ("fr", False)
    assert (await prefs.for_message(mid)).language == "de"


async def test_usage_log_survives_killed_connections(
    db: tuple[AsyncEngine, SqlStore, Killer],
) -> None:
    engine, _, kill = db
    usage, ada, day = UsageLog(engine, flush_s=0), Subject("user", "test:u1"), date(2026, 12, 2)
    await usage.add(day, [ada], Spent(prompt_tokens=10, completion_tokens=5, turns=1))
    await kill.before(usage.add(day, [ada], Spent(prompt_tokens=1, turns=1)))  # a flush
    assert await kill.before(usage.written(day, ada)) == 16
    [line] = await kill.before(usage.report(day))
    assert line.spent == Spent(prompt_tokens=11, completion_tokens=5, turns=2)


async def test_knowledge_rows_survive_killed_connections(
    db: tuple[AsyncEngine, SqlStore, Killer], tmp_path: Path
) -> None:
    engine, _, kill = db
    kb = KnowledgeBase(engine)
    assert await kb.is_empty()
    note = tmp_path / "notes.txt"
    note.write_text("Returns are accepted within thirty days of delivery.\n")
    report = await kill.before(kb.add([note]))
    assert [f.outcome for f in report.files] == [Outcome.ADDED]
    assert not await kill.before(kb.is_empty())
    assert [d.title for d in await kill.before(kb.list())] == ["notes"]
    [passage] = await kill.before(kb.search("returns within thirty days"))
    assert "thirty days" in passage.text
    assert await kill.before(kb.remove(note)) == 1


async def test_support_sites_survive_killed_connections(
    db: tuple[AsyncEngine, SqlStore, Killer],
) -> None:
    """The support adapter's sites and server keys (adapters/support/sites.py): a worker's
    directory refresh after a restart of PostgreSQL failed once per pooled connection, and a
    visitor's request with it."""
    engine, _, kill = db
    sites = SiteStore(engine)
    shop = await sites.add_site("shop", ["https://shop.example"])
    assert [s.name for s in await kill.before(sites.sites())] == ["shop"]
    key_id, _ = await kill.before(sites.add_key("shop"))
    assert [k.key_id for k in await kill.before(sites.keys())] == [key_id]
    assert list((await kill.before(sites.live_key_hashes())).values()) == [shop.id]
    await kill.before(sites.revoke_key(key_id))
    assert await kill.before(sites.live_key_hashes()) == {}
    wider = await kill.before(sites.update_site("shop", add_origins=["https://www.shop.example"]))
    assert wider.origins == ("https://shop.example", "https://www.shop.example")
    await kill.before(sites.add_site("other", ["https://other.example"]))
    assert await kill.before(sites.remove_site("other")) == []
    assert [s.name for s in await sites.sites()] == ["shop"]
