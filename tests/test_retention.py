"""The retention policy: `conversation.retention_days`, `parley db prune`, and the daily prune
of a running worker (docs/database.md, "Retention").

Messages older than the cutoff are deleted, in batches; a pending message, the messages of an
unfinished delivery and a question whose answer is newer are kept. What quotes a pruned
message goes too: the conversation's running summary (rebuilt from what remains, the /reset
point kept) and its cached context windows (stale by the count of redactions the prune raises
in the same transaction; in process, dropped by the worker that prunes).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backends.base import Chunk, GenerationRequest, estimate_tokens
from bot.cli import main
from bot.conversation import retention
from bot.conversation.context import ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import SUMMARY_INSTRUCTION, Summarizer
from bot.handoff.models import MessageSignalRow
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.router import CommandRouter
from bot.storage.base import Cache, MessageKind
from bot.storage.cache import build_cache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.models import ConversationRow, MessageRow
from bot.storage.prefs_models import MessageReplyRow
from bot.storage.sql_store import PRUNE_BATCH, RETAINED_STUB, SqlStore
from bot.types import ConversationKey, Incoming, Role, User, utcnow
from tests.doubles import CollectingSink, ScriptedBackend
from tests.processes import finish, parley_env, parley_run
from tests.telegram_api import TOKEN, FakeBotApi

KEY = ConversationKey("test", "retention")
ADA = User("test", "u1", "Ada")
SECRET = "sk-OLD-SECRET-42"
DAYS = 30
WAIT_S = 10


def days_ago(days: float) -> datetime:
    return utcnow() - timedelta(days=days)


def cutoff() -> datetime:
    return days_ago(DAYS)


def message(text: str, key: str, *, sent_at: datetime | None = None, **more: Any) -> Incoming:
    return Incoming(KEY, ADA, text, idempotency_key=key, sent_at=sent_at or utcnow(), **more)


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[SqlStore]:
    await ensure_schema(url, True)
    store = SqlStore(create_engine(url))
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


async def backdate(store: SqlStore, ids: list[int], days: float) -> None:
    """As if these messages had been written `days` ago."""
    async with store.engine.begin() as conn:
        stmt = sa.update(MessageRow).where(MessageRow.id.in_(ids))
        await conn.execute(stmt.values(created_at=days_ago(days)))


async def stored_ids(store: SqlStore) -> set[int]:
    async with store.engine.connect() as conn:
        return set((await conn.execute(sa.select(MessageRow.id))).scalars())


async def texts(store: SqlStore) -> list[str]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(sa.select(MessageRow.content))).scalars())


async def turn(store: SqlStore, text: str, key: str, *, days: float = 0) -> tuple[int, int]:
    """A question and its answer, both written `days` ago: their ids."""
    asked = await store.record_incoming(message(text, key), kind=MessageKind.CHAT, token_count=3)
    reply = await store.record_reply(
        asked.conversation_id, [asked.message_id], f"answer to {text}",
        kind=MessageKind.CHAT, token_count=3,
    )  # fmt: skip
    assert reply is not None
    if days:
        await backdate(store, [asked.message_id, reply.id], days)
    return asked.message_id, reply.id


async def test_old_answered_messages_go_pending_and_recent_ones_stay(database_url: str) -> None:
    async with opened(database_url) as store:
        q1, a1 = await turn(store, f"my key is {SECRET}", "m1", days=DAYS + 5)
        # Answered late: the question is old, its answer recent; the turn stays whole.
        q2, a2 = await turn(store, "an old question", "m2")
        await backdate(store, [q2], DAYS + 4)
        # Never answered (its turns failed, or the worker is down): pending, kept however old.
        pending = await store.record_incoming(
            message("still waiting", "m3", sent_at=days_ago(DAYS + 3)),
            kind=MessageKind.CHAT, token_count=3,
        )  # fmt: skip
        q4, a4 = await turn(store, "yesterday's question", "m4", days=1)
        cid = pending.conversation_id
        # Rows that point at a pruned message (foreign keys, ON DELETE CASCADE).
        async with store.engine.begin() as conn:
            await conn.execute(sa.insert(MessageReplyRow).values(message_id=q1,
                                                                 reply_to_text=SECRET))  # fmt: skip
            await conn.execute(sa.insert(MessageSignalRow).values(
                message_id=q1, conversation_id=cid, label="neutral", score=0.0,
                source="test"))  # fmt: skip

        assert (await store.prune(cutoff(), dry_run=True)).count == 2
        assert await stored_ids(store) == {q1, a1, q2, a2, pending.message_id, q4, a4}

        pruned = await store.prune(cutoff())
        assert pruned.count == 2
        assert pruned.conversations == {cid}
        assert await stored_ids(store) == {q2, a2, pending.message_id, q4, a4}
        assert not [text for text in await texts(store) if SECRET in text]
        async with store.engine.connect() as conn:
            for table in (MessageReplyRow, MessageSignalRow):
                assert (
                    await conn.execute(sa.select(sa.func.count()).select_from(table))
                ).scalar_one() == 0
        assert [m.id for m in await store.pending(cid, 10)] == [pending.message_id]
        # Idempotent: nothing more to do.
        assert (await store.prune(cutoff())).count == 0
        assert (await store.prune(cutoff(), dry_run=True)).count == 0


async def test_the_messages_of_an_unfinished_delivery_stay(database_url: str) -> None:
    """A group's kept message (answered by nothing: not pending) between two pending ones
    that a worker began to answer: the worker that finishes the delivery reads that range."""
    async with opened(database_url) as store:
        old = days_ago(DAYS + 1)
        first = await store.record_incoming(message("first", "g1", sent_at=old),
                                            kind=MessageKind.CHAT, token_count=1)  # fmt: skip
        kept = await store.record_incoming(message("said aside", "g2", sent_at=old),
                                           kind=MessageKind.OBSERVED, token_count=1)  # fmt: skip
        last = await store.record_incoming(message("last", "g3", sent_at=old),
                                           kind=MessageKind.CHAT, token_count=1)  # fmt: skip
        cid = first.conversation_id
        async with store.turn_lease(cid, "worker-1", ttl_s=30, wait_s=5) as lease:
            assert await store.begin_delivery(lease, cid, first.message_id, last.message_id)
        delivery = await store.delivery(cid)
        assert delivery is not None  # the worker died showing it

        assert (await store.prune(cutoff())).count == 0
        assert {first.message_id, kept.message_id, last.message_id} <= await stored_ids(store)

        # Another worker finishes it: the answer is recorded and the delivery ends.
        async with store.turn_lease(cid, "worker-2", ttl_s=30, wait_s=5) as lease:
            assert await store.begin_delivery(lease, cid, first.message_id, last.message_id,
                                              replacing=delivery)  # fmt: skip
            answer = await store.record_reply(
                cid, [first.message_id, last.message_id], "both answered",
                kind=MessageKind.CHAT, token_count=2, epoch=lease.epoch,
            )  # fmt: skip
        assert answer is not None
        await backdate(store, [answer.id], DAYS + 1)
        asked, recent = await turn(store, "a recent one", "g4")  # the newest: never a stub
        assert (await store.prune(cutoff())).count == 4
        assert await stored_ids(store) == {asked, recent}


async def test_a_database_idle_past_the_cutoff_keeps_its_newest_message_as_a_stub(
    database_url: str,
) -> None:
    """On SQLite a new row takes the largest id plus one: were the newest message deleted,
    ids would go back behind the /reset points and summaries that conversations hold."""
    async with opened(database_url) as store:
        await turn(store, "first", "i1", days=DAYS + 2)
        _, a2 = await turn(store, f"the last words: {SECRET}", "i2", days=DAYS + 1)
        assert (await store.prune(cutoff(), dry_run=True)).count == 4
        assert (await store.prune(cutoff())).count == 4
        assert await stored_ids(store) == {a2}
        assert await texts(store) == [RETAINED_STUB]
        assert (await store.prune(cutoff(), dry_run=True)).count == 0
        assert (await store.prune(cutoff())).count == 0
        q3, _ = await turn(store, "back again", "i3")
        assert q3 > a2


async def test_prunes_in_batches(database_url: str) -> None:
    async with opened(database_url) as store:
        recorded = await store.record_incoming(message("hello", "b0"), kind=MessageKind.CHAT,
                                               token_count=1)  # fmt: skip
        cid = recorded.conversation_id
        rows = [{"conversation_id": cid, "role": "assistant", "kind": "chat",
                 "content": f"old {i}", "created_at": days_ago(DAYS + 1)}
                for i in range(PRUNE_BATCH + 7)]  # fmt: skip
        async with store.engine.begin() as conn:
            await conn.execute(sa.insert(MessageRow), rows)
        await turn(store, "recent", "b1")
        statements: list[str] = []

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE FROM MESSAGES"):
                statements.append(statement)

        sa.event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
        try:
            assert (await store.prune(cutoff())).count == PRUNE_BATCH + 7
        finally:
            sa.event.remove(store.engine.sync_engine, "before_cursor_execute", seen)
        assert len(statements) == 2
        async with store.engine.connect() as conn:
            state = (await conn.execute(sa.select(ConversationRow.redactions))).scalar_one()
        assert state == 2  # one per batch that pruned from it


async def test_workers_pruning_at_once_share_the_work(
    pg_stores: tuple[SqlStore, SqlStore, str],
) -> None:
    """PostgreSQL: each batch skips the rows another prune has locked; no wait, no
    deadlock, every old message deleted once."""
    one, two, _ = pg_stores
    cids = []
    for n in range(40):
        key = ConversationKey("test", f"busy-{n}")
        asked = await one.record_incoming(
            Incoming(key, ADA, "hi", idempotency_key=f"c{n}"), kind=MessageKind.CHAT,
            token_count=1,
        )  # fmt: skip
        cids.append(asked.conversation_id)
    rows = [{"conversation_id": cids[i % len(cids)], "role": "assistant", "kind": "chat",
             "content": f"old {i}", "created_at": days_ago(DAYS + 1)}
            for i in range(3 * PRUNE_BATCH)]  # fmt: skip
    async with one.engine.begin() as conn:
        await conn.execute(sa.insert(MessageRow), rows)
    counts = await asyncio.gather(one.prune(cutoff()), two.prune(cutoff()), one.prune(cutoff()))
    assert sum(p.count for p in counts) == 3 * PRUNE_BATCH
    assert (await one.prune(cutoff(), dry_run=True)).count == 0


async def test_a_prune_skips_the_rows_another_transaction_holds_and_does_not_wait(
    pg_stores: tuple[SqlStore, SqlStore, str],
) -> None:
    """PostgreSQL: rows locked by another transaction (another worker's batch) are skipped,
    not waited for: the prune ends while the lock is still held, every other old message
    gone, the locked ones left for the next run. Without SKIP LOCKED it would wait on the
    lock until the statement timed out (a review found the test above passes without it)."""
    one, two, _ = pg_stores
    asked = await one.record_incoming(
        Incoming(ConversationKey("test", "locked"), ADA, "hi", idempotency_key="lk"),
        kind=MessageKind.CHAT, token_count=1,
    )  # fmt: skip
    rows = [{"conversation_id": asked.conversation_id, "role": "assistant", "kind": "chat",
             "content": f"old {i}", "created_at": days_ago(DAYS + 1)}
            for i in range(50)]  # fmt: skip
    async with one.engine.begin() as conn:
        await conn.execute(sa.insert(MessageRow), rows)
    held = (
        sa.select(MessageRow.id)
        .where(MessageRow.content.like("old %"))
        .order_by(MessageRow.created_at, MessageRow.id)
        .limit(10)
        .with_for_update()
    )
    async with one.engine.connect() as holder:
        await holder.begin()
        locked = set((await holder.execute(held)).scalars())
        assert len(locked) == 10
        # A hang detector only: a prune that waits for the lock never ends while it is held.
        pruned = await asyncio.wait_for(two.prune(cutoff()), timeout=60)
        await holder.rollback()
    assert pruned.count == 40
    async with one.engine.connect() as conn:
        left = set((await conn.execute(sa.select(MessageRow.id).where(
            MessageRow.content.like("old %")))).scalars())  # fmt: skip
    assert left == locked
    assert (await one.prune(cutoff())).count == 10


# --- the summary and the cached windows ----------------------------------------------------


class Model(ScriptedBackend):
    """Answers "Noted."; a summary keeps the secret it reads (as a model told to keep facts
    does)."""

    def __init__(self) -> None:
        super().__init__(lambda request: "Noted.")

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if request.messages[0].content.startswith(SUMMARY_INSTRUCTION[:20]):
            read = request.messages[-1].content
            yield Chunk(text=f"They shared {SECRET}." if SECRET in read else "They talked.")
            return
        async for chunk in super().stream(request):
            yield chunk


@dataclass
class Worker:
    manager: ConversationManager
    store: SqlStore
    sink: CollectingSink
    cache: Cache
    backend: Model


async def count(text: str) -> int:
    return estimate_tokens(text)


@asynccontextmanager
async def worker(
    url: str, redis_url: str | None, prefix: str, *, budget_tokens: int = 2000, **conversation: Any
) -> AsyncIterator[Worker]:
    """One worker's turn pipeline on `url`, its windows in Redis where `redis_url` is given,
    else in process; `conversation`: settings of that section."""
    redis = {"url": redis_url, "key_prefix": prefix} if redis_url else {}
    settings = Settings(database={"url": url}, redis=redis, conversation=conversation)  # type: ignore[arg-type]
    backend = Model()
    async with opened(url) as store:
        cache = build_cache(settings.redis)
        summarizer = Summarizer(backend, max_tokens=64, count_tokens=count)
        context = ContextLoader(store, cache, summarizer, budget_tokens=budget_tokens)
        router = CommandRouter()
        register_core_commands(router)
        manager = ConversationManager(
            store=store, cache=cache, context=context, router=router, backend=backend,
            settings=settings.conversation, generation=settings.backend, count_tokens=count,
        )  # fmt: skip
        sink = CollectingSink()
        manager.attach(KEY.platform, sink)
        try:
            yield Worker(manager, store, sink, cache, backend)
        finally:
            await manager.aclose()
            await cache.aclose()


def last_prompt(backend: ScriptedBackend) -> list[str]:
    """The history of the newest chat request: every message but the system prompt."""
    chats = [r for r in backend.requests
             if not r.messages[0].content.startswith(SUMMARY_INSTRUCTION[:20])]  # fmt: skip
    return [m.content for m in chats[-1].messages if m.role is not Role.SYSTEM]


async def backdate_all(w: Worker, days: float) -> None:
    await backdate(w.store, sorted(await stored_ids(w.store)), days)


async def test_a_pruned_message_leaves_the_window_cached_in_redis(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """`parley db prune` runs in a process of its own: the workers' windows in Redis (or in
    a worker's memory) still hold the pruned turn, and pass for current by boundary and last
    reply. The count of redactions the prune raised makes them stale."""
    async with worker(database_url, windows, key_prefix) as w:
        await w.manager.handle(message(f"my key is {SECRET}", "w1"))
        await w.manager.handle(message("and the weather?", "w2"))
        assert [t for t in last_prompt(w.backend) if SECRET in t]  # cached, in the window
        await backdate_all(w, DAYS + 1)
        await w.manager.handle(message("recent", "w3"))
        async with opened(database_url) as other:  # the command's own store
            assert (await other.prune(cutoff())).count == 4
        await w.manager.handle(message("what did I say?", "w4"))
        prompt = last_prompt(w.backend)
        assert not [t for t in prompt if SECRET in t]
        assert prompt == ["recent", "Noted.", "what did I say?"]


@pytest.fixture(params=["in-process", "redis"])
def windows(request: pytest.FixtureRequest) -> str | None:
    if request.param == "in-process":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


# About 190 tokens: with its answer and the next message, over a budget of 200.
LONG = f"my key is {SECRET}. " + "The harbour crane moved crates of tea all day. " * 16


class PruneLog(logging.Handler):
    """The retention loop's log records, as they come."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.arrived: asyncio.Queue[str] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.put_nowait(record.getMessage())

    async def next(self) -> str:
        async with asyncio.timeout(WAIT_S):
            return await self.arrived.get()


@pytest.fixture
def prune_log() -> Iterator[PruneLog]:
    logger = logging.getLogger(retention.__name__)
    handler, level = PruneLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_a_summary_that_quotes_a_pruned_message_is_dropped_the_reset_point_kept(
    database_url: str, windows: str | None, key_prefix: str, prune_log: PruneLog
) -> None:
    """The window rolled over: the summary in SQL (and in every prompt) quotes the old turn.
    The worker's own prune drops it, with the window; the /reset point stays."""
    settings: dict[str, Any] = {"retention_days": DAYS, "retention_interval_s": 1.0}
    async with worker(database_url, windows, key_prefix, budget_tokens=200, **settings) as w:
        await w.manager.handle(message("before the reset", "s0"))
        await w.manager.handle(message("/reset", "s1"))
        await w.manager.handle(message(LONG, "s2"))
        await w.manager.handle(message("what next?", "s3"))  # folds the LONG turn
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        before = await w.store.state(cid)
        assert SECRET in before.summary and before.context_start_id > 0
        assert [t for t in last_prompt(w.backend) if SECRET in t]
        await backdate_all(w, DAYS + 1)
        await w.manager.handle(message("recent", "s4"))
        assert [t for t in last_prompt(w.backend) if SECRET in t]  # the summary, and cached

        w.manager.start()  # the worker's background duties, the daily prune among them
        assert await prune_log.next() == (
            f"retention: pruned 8 message(s) older than {DAYS} day(s) from 1 conversation(s)"
        )
        after = await w.store.state(cid)
        assert after.summary == "" and after.summary_tokens == 0
        assert after.context_start_id == before.context_start_id
        assert not [t for t in await texts(w.store) if SECRET in t]

        await w.manager.handle(message("what did I say?", "s5"))
        prompt = last_prompt(w.backend)
        assert not [t for t in prompt if SECRET in t]
        assert prompt == ["recent", "Noted.", "what did I say?"]
        assert SECRET not in (await w.store.state(cid)).summary


async def test_a_running_worker_prunes_by_itself_every_interval(
    database_url: str, prune_log: PruneLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conversation.retention_days > 0: each worker prunes shortly after it starts, then
    every retention_interval_s, and says how many messages went in one INFO line."""
    monkeypatch.setattr(retention, "FIRST_PRUNE_WITHIN_S", 0.0)
    settings: dict[str, Any] = {"retention_days": DAYS, "retention_interval_s": 1.0}
    async with worker(database_url, None, "", **settings) as w:
        await w.manager.handle(message(f"my key is {SECRET}", "d1"))
        await w.manager.handle(message("hello again", "d2"))
        w.manager.start()
        assert await prune_log.next() == (  # at once: nothing old yet
            f"retention: pruned 0 message(s) older than {DAYS} day(s) from 0 conversation(s)"
        )
        ids = sorted(await stored_ids(w.store))
        assert len(ids) == 4
        await backdate(w.store, ids[:2], DAYS + 1)  # the first turn ages past the cutoff
        assert await prune_log.next() == (  # an interval later
            f"retention: pruned 2 message(s) older than {DAYS} day(s) from 1 conversation(s)"
        )
        assert await stored_ids(w.store) == set(ids[2:])
        assert [r.levelno for r in prune_log.records] == [logging.INFO, logging.INFO]
        await w.manager.handle(message("what did I say?", "d3"))
        assert not [t for t in last_prompt(w.backend) if SECRET in t]


async def test_a_worker_without_retention_days_never_prunes(
    database_url: str, prune_log: PruneLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "FIRST_PRUNE_WITHIN_S", 0.0)
    async with worker(database_url, None, "", retention_interval_s=1.0) as w:
        await w.manager.handle(message("hello", "n1"))
        await backdate_all(w, 10_000)
        w.manager.start()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):  # two intervals and a half
                await prune_log.arrived.get()
        assert len(await stored_ids(w.store)) == 2


# --- parley db prune ----------------------------------------------------------------------


@pytest.fixture
def cli_url(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """`parley` commands run on `database_url` (a SQLite file, then PostgreSQL)."""
    for name, value in parley_env(
        tmp_path, {"PARLEY_DATABASE__URL": database_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true"}
    ).items():
        monkeypatch.setenv(name, value)  # fmt: skip
    return database_url


async def _seed(url: str) -> None:
    async with opened(url) as store:
        await turn(store, f"my key is {SECRET}", "p1", days=DAYS + 5)
        await turn(store, "last month", "p2", days=DAYS - 1)
        await turn(store, "today", "p3")


async def _count(url: str) -> int:
    async with opened(url) as store:
        return len(await stored_ids(store))


def test_db_prune_dry_run_counts_and_deletes_nothing_then_prunes(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_seed(cli_url))
    assert main(["db", "prune", "--older-than", str(DAYS), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"would prune 2 message(s) older than {DAYS} day(s) (created before ")
    assert len(out.splitlines()) == 1 and err == ""
    assert asyncio.run(_count(cli_url)) == 6

    assert main(["db", "prune", "--older-than", str(DAYS)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"pruned 2 message(s) older than {DAYS} day(s)")
    assert SECRET not in out + err
    assert asyncio.run(_count(cli_url)) == 4

    assert main(["db", "prune", "--older-than", "7"]) == 0  # 7 days: last month's turn too
    assert capsys.readouterr().out.startswith("pruned 2 message(s) older than 7 day(s)")
    assert asyncio.run(_count(cli_url)) == 2


def test_db_prune_takes_its_days_from_the_setting(
    cli_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_seed(cli_url))
    monkeypatch.setenv("PARLEY_CONVERSATION__RETENTION_DAYS", str(DAYS))
    assert main(["db", "prune"]) == 0
    assert capsys.readouterr().out.startswith(f"pruned 2 message(s) older than {DAYS} day(s)")
    assert asyncio.run(_count(cli_url)) == 4


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["db", "prune"], "parley: error: db prune: how old? give --older-than DAYS, or set "
         "conversation.retention_days (0, the default, keeps every message)"),
        (["db", "prune", "--dry-run"], "parley: error: db prune: how old? give --older-than "
         "DAYS, or set conversation.retention_days (0, the default, keeps every message)"),
        (["db", "prune", "--older-than", "soon"], "parley: error: db prune: --older-than takes "
         "a whole number of days from 1 to 36500"),
        (["db", "prune", "--older-than", "0"], "parley: error: db prune: --older-than takes a "
         "whole number of days from 1 to 36500"),
        (["db", "prune", "--older-than", "-3"], "parley: error: db prune: --older-than takes a "
         "whole number of days from 1 to 36500"),
        (["db", "prune", "head"], "parley: error: db prune: takes only --older-than DAYS and "
         "--dry-run"),
        (["db", "upgrade", "--dry-run"], "parley: error: db upgrade: --older-than and "
         "--dry-run are for db prune only"),
        # It printed the database's revision, the one given ignored, and exit status 0.
        (["db", "current", "0005"], "parley: error: db current: takes no revision and no "
         "--yes (`parley db upgrade REV` or `parley db downgrade REV --yes` move to one)"),
        (["db", "current", "--yes"], "parley: error: db current: takes no revision and no "
         "--yes (`parley db upgrade REV` or `parley db downgrade REV --yes` move to one)"),
    ],
)  # fmt: skip
def test_db_prune_errors_are_one_line_and_status_2(
    argv: list[str], error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [error]
    assert out == ""
    assert not (tmp_path / "parley.db").exists()  # refused before anything was opened


def test_retention_days_out_of_bounds_is_refused_at_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in parley_env(tmp_path, {"PARLEY_CONVERSATION__RETENTION_DAYS": "-1"}).items():
        monkeypatch.setenv(name, value)
    assert main(["db", "prune"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("parley: error: invalid setting PARLEY_CONVERSATION__RETENTION_DAYS")


async def test_parley_run_prunes_by_itself(tmp_path: Path) -> None:
    """The whole way: `parley run` (a Telegram worker) with conversation.retention_days set
    prunes on its own, shortly after its start, and logs the count, not the text."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    async with opened(url) as store:
        await turn(store, f"my key is {SECRET}", "r1", days=DAYS + 1)
        await turn(store, "today", "r2")
    api = FakeBotApi()
    async with api.serving() as base_url:
        env = {
            "PARLEY_ADAPTERS": "telegram",
            "PARLEY_TELEGRAM__TOKEN": TOKEN,
            "PARLEY_TELEGRAM__BASE_URL": base_url,
            "PARLEY_CONVERSATION__RETENTION_DAYS": str(DAYS),
            "PARLEY_CONVERSATION__RETENTION_INTERVAL_S": "1",
        }
        async with parley_run(tmp_path, env) as process:
            assert process.stderr is not None
            lines: list[str] = []
            async with asyncio.timeout(60):
                while "retention: pruned" not in (
                    line := (await process.stderr.readline()).decode()
                ):
                    assert line, "".join(lines)
                    lines.append(line)
            process.send_signal(signal.SIGTERM)
            status, err = await finish(process)
    assert status == 0, err
    assert line.rstrip().endswith(
        " INFO bot.conversation.retention: retention: pruned 2 message(s) older than "
        f"{DAYS} day(s) from 1 conversation(s)"
    )
    assert SECRET not in "".join(lines) + line + err
    async with opened(url) as store:
        assert len(await stored_ids(store)) == 2
