"""The backlog: what the start-up recovery and the orphan sweep find (after an outage, every
conversation with a message left unanswered) runs `conversation.backlog_turns` conversations
at a time, on SQLite and PostgreSQL. Started all at once, 10,000 of them queued for the
database pool's 10 connections past its 30 s timeout on PostgreSQL (half their turns failed
and were left for the sweep) and a new message waited 48 s behind them (a helper's review)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

from backends.base import Chunk, GenerationRequest
from bot.app import Parley
from bot.settings import Settings
from bot.storage.base import MessageKind
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink, ScriptedBackend

BACKLOG = 12
LIVE = ConversationKey("test", "live")


def key(n: int) -> ConversationKey:
    return ConversationKey("test", f"backlog-{n}")


def message(at: ConversationKey, text: str, idem: str) -> Incoming:
    return Incoming(at, User("test", f"user-{at.chat_id}", "Ada"), text, idempotency_key=idem)


class HeldBackend(ScriptedBackend):
    """Holds every answer but the ones to `free` conversations until `release` is set, and
    keeps the most requests it held at once."""

    def __init__(self, free: set[ConversationKey]) -> None:
        super().__init__()
        self.free = {str(k) for k in free}
        self.release = asyncio.Event()
        self.held = 0
        self.most_held = 0
        self._changed = asyncio.Condition()

    async def holding(self, count: int) -> None:
        """Wait until it holds `count` requests at once."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.held >= count)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if request.session_id not in self.free:
            async with self._changed:
                self.held += 1
                self.most_held = max(self.most_held, self.held)
                self._changed.notify_all()
            try:
                await self.release.wait()
            finally:
                self.held -= 1
        async for chunk in super().stream(request):
            yield chunk


@asynccontextmanager
async def backlog_of(
    database_url: str, backend: HeldBackend, **conversation: object
) -> AsyncIterator[tuple[Parley, CollectingSink]]:
    """A worker whose database holds BACKLOG conversations with one message pending each,
    left by a worker that stopped before it answered them."""
    settings = Settings(
        database={"url": database_url},  # type: ignore[arg-type]
        conversation={"backlog_turns": 3, **conversation},  # type: ignore[arg-type]
    )
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        for n in range(BACKLOG):
            incoming = message(key(n), f"question {n}", f"backlog-{n}")
            await app.store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=3)
        sink = CollectingSink()
        app.manager.attach("test", sink)
        try:
            yield app, sink
        finally:
            backend.release.set()  # a failed test's held turns must not hold up the stop


async def test_the_recovered_backlog_runs_a_few_turns_at_a_time_and_new_messages_first(
    database_url: str,
) -> None:
    backend = HeldBackend(free={LIVE})
    async with backlog_of(database_url, backend) as (app, sink):
        assert await app.manager.recover() == BACKLOG
        await backend.holding(3)
        # A new message is answered while the backlog's turns are still held.
        await app.manager.handle(message(LIVE, "I am new here", "live-1"))
        assert sink.replies[LIVE] == ["echo: I am new here"]
        assert backend.most_held == 3
        backend.release.set()
        await app.manager.wait_idle()
        assert backend.most_held == 3
        # Every message of the backlog answered, once.
        assert {k: v for k, v in sink.replies.items() if k != LIVE} == {
            key(n): [f"echo: question {n}"] for n in range(BACKLOG)
        }
        assert await app.store.conversations_with_pending() == []


async def test_the_sweep_runs_its_backlog_a_few_turns_at_a_time(database_url: str) -> None:
    backend = HeldBackend(free={LIVE})
    swept = backlog_of(database_url, backend, sweep_interval_s=0.05, orphan_after_s=0.01)
    async with swept as (app, sink):
        await backend.holding(3)  # the sweep found the backlog (no recover() here)
        await app.manager.handle(message(LIVE, "anyone?", "live-1"))
        assert sink.replies[LIVE] == ["echo: anyone?"]
        assert backend.most_held == 3
        backend.release.set()
        while await app.store.conversations_with_pending():
            await app.manager.wait_idle()
            await asyncio.sleep(0.05)  # the next sweep takes up the queued rest
        assert backend.most_held == 3
        assert {k: v for k, v in sink.replies.items() if k != LIVE} == {
            key(n): [f"echo: question {n}"] for n in range(BACKLOG)
        }


async def test_a_new_message_runs_its_queued_conversation_at_once(database_url: str) -> None:
    """A conversation of the backlog waiting for a place runs as soon as its user writes
    again: both messages answered in that turn, not after the rest of the backlog."""
    last = key(BACKLOG - 1)
    backend = HeldBackend(free={last})
    async with backlog_of(database_url, backend) as (app, sink):
        await app.manager.recover()
        await backend.holding(3)
        await app.manager.handle(message(last, "hello?", "again"))
        assert sink.replies[last] == [f"echo: question {BACKLOG - 1}\n\nhello?"]
        backend.release.set()
        await app.manager.wait_idle()
        assert sink.replies[last] == [f"echo: question {BACKLOG - 1}\n\nhello?"]
        assert all(len(sink.replies[key(n)]) == 1 for n in range(BACKLOG))


async def test_a_stop_leaves_the_queued_backlog_pending_for_the_next_start(
    database_url: str,
) -> None:
    """The drain lets the backlog's running turns finish and starts none of the queued ones:
    their messages stay pending in SQL, and the next start answers each of them once."""
    backend = HeldBackend(free=set())
    async with backlog_of(database_url, backend) as (app, sink):
        await app.manager.recover()
        await backend.holding(3)
        draining = asyncio.create_task(app.manager.drain(timeout_s=60))
        backend.release.set()
        assert await draining is True
        await app.manager.wait_idle()
        answered = {k for k, replies in sink.replies.items() if replies}
        assert len(answered) == 3
        left = {k for _, k in await app.store.conversations_with_pending()}
        assert left == {key(n) for n in range(BACKLOG)} - answered
    settings = Settings(database={"url": database_url})  # type: ignore[arg-type]
    async with Parley(settings, backend=ScriptedBackend()) as again:
        after = CollectingSink()
        again.manager.attach("test", after)
        assert await again.manager.recover() == BACKLOG - 3
        await again.manager.wait_idle()
        assert set(after.replies) == left
        assert all(len(after.replies[k]) == 1 for k in left)
        assert await again.store.conversations_with_pending() == []
