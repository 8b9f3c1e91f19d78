"""A flood of new messages across many conversations runs `conversation.max_turns` of them at
a time, on SQLite and PostgreSQL. Started all at once (a bot added to a big channel, a spam
wave), thousands of turns queued for the database pool's connections past its timeout, as
the backlog after an outage did before conversation.backlog_turns (tests/test_backlog.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

from backends.base import Chunk, GenerationRequest
from bot.app import Parley
from bot.settings import Settings
from bot.skills.router import Command, TurnContext
from bot.types import ConversationKey
from tests.doubles import CollectingSink, ScriptedBackend
from tests.test_backlog import BACKLOG, LIVE, HeldBackend, backlog_of, key, message

FLOOD = 12
PLACES = 3


def chat(n: int) -> ConversationKey:
    return ConversationKey("test", f"flood-{n}")


class WhoIsHeld(HeldBackend):
    """HeldBackend that also keeps whose requests it holds now."""

    def __init__(self) -> None:
        super().__init__(free=set())
        self.sessions: list[str] = []

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.sessions.append(request.session_id)
        try:
            async for chunk in super().stream(request):
                yield chunk
        finally:
            self.sessions.remove(request.session_id)


class FailsOnce:
    """A /fail command whose first run waits for `fail`, then fails (a bug: not a BotError,
    so the turn fails and its message stays pending); it answers the runs after that."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.fail = asyncio.Event()

    async def __call__(self, ctx: TurnContext) -> str:
        if not self.running.is_set():
            self.running.set()
            await self.fail.wait()
            raise RuntimeError("the command fell over")
        return "done"


@asynccontextmanager
async def worker(
    database_url: str, backend: ScriptedBackend, **conversation: object
) -> AsyncIterator[tuple[Parley, CollectingSink]]:
    settings = Settings(
        database={"url": database_url},  # type: ignore[arg-type]
        conversation={"max_turns": PLACES, "burst": "queue", **conversation},  # type: ignore[arg-type]
    )
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        sink = CollectingSink()
        app.manager.attach("test", sink)
        yield app, sink


def gauges(app: Parley) -> tuple[float | None, float | None]:
    """parley_turns_running and parley_turns_waiting{queue="new"}, as a scrape reads them."""
    app.metrics.refresh_local()
    registry = app.metrics.registry
    running = registry.get_sample_value("parley_turns_running")
    return running, registry.get_sample_value("parley_turns_waiting", {"queue": "new"})


async def test_a_flood_runs_max_turns_at_a_time_each_message_answered_once_in_order(
    database_url: str,
) -> None:
    backend = WhoIsHeld()
    async with worker(database_url, backend) as (app, sink):
        try:
            for n in range(FLOOD):
                await app.manager.submit(message(chat(n), f"first {n}", f"first-{n}"))
            await backend.holding(PLACES)
            assert backend.most_held == PLACES
            assert gauges(app) == (PLACES, FLOOD - PLACES)
            # A conversation holds one place however many messages it has: a second message
            # to one that runs, and to one that waits, take no other place.
            await app.manager.submit(message(chat(0), "second 0", "second-0"))
            await app.manager.submit(message(chat(FLOOD - 1), "second last", "second-last"))
            assert gauges(app) == (PLACES, FLOOD - PLACES)
            assert sorted(backend.sessions) == sorted(str(chat(n)) for n in range(PLACES))
            # A message that waits for a place is waited for by handle() (the console's).
            late = ConversationKey("test", "late")
            handled = asyncio.create_task(app.manager.handle(message(late, "me too", "late")))
            backend.release.set()
            await handled
            assert sink.replies[late] == ["echo: me too"]
            await app.manager.wait_idle()
        finally:
            backend.release.set()
        assert backend.most_held == PLACES
        assert gauges(app) == (0, 0)
        expected = {chat(n): [f"echo: first {n}"] for n in range(FLOOD)}
        expected[chat(0)].append("echo: second 0")
        expected[chat(FLOOD - 1)].append("echo: second last")
        expected[late] = ["echo: me too"]
        assert sink.replies == expected
        assert await app.store.conversations_with_pending() == []


async def test_new_messages_take_free_places_before_the_backlog(database_url: str) -> None:
    """With the backlog's places (backlog_turns) below max_turns, a new message runs at once
    beside the backlog; once every place is taken, the next free one goes to a waiting new
    message, not to the backlog that waited before it."""
    backend = WhoIsHeld()
    held_backlog = backlog_of(database_url, backend, max_turns=PLACES, backlog_turns=2)
    async with held_backlog as (app, sink):
        assert await app.manager.recover() == BACKLOG
        await backend.holding(2)
        for n in range(3):
            await app.manager.submit(message(chat(n), f"new {n}", f"new-{n}"))
        await backend.holding(PLACES)
        assert backend.most_held == PLACES
        assert app.manager.turns_waiting() == {"new": 2, "backlog": BACKLOG - 2}
        assert str(chat(0)) in backend.sessions
        backend.release.set()
        await app.manager.wait_idle()
        assert backend.most_held == PLACES
        assert all(sink.replies[key(n)] == [f"echo: question {n}"] for n in range(BACKLOG))
        assert all(sink.replies[chat(n)] == [f"echo: new {n}"] for n in range(3))
        assert await app.store.conversations_with_pending() == []


async def test_a_stop_leaves_the_waiting_messages_pending_and_the_next_start_answers_them(
    database_url: str,
) -> None:
    backend = WhoIsHeld()
    async with worker(database_url, backend) as (app, sink):
        try:
            for n in range(FLOOD):
                await app.manager.submit(message(chat(n), f"hello {n}", f"hello-{n}"))
            await backend.holding(PLACES)
            draining = asyncio.create_task(app.manager.drain(timeout_s=60))
            backend.release.set()
            assert await draining is True
        finally:
            backend.release.set()
        assert backend.most_held == PLACES
        assert gauges(app) == (0, 0)
        answered = {k for k, replies in sink.replies.items() if replies}
        assert len(answered) == PLACES
        left = {k for _, k in await app.store.conversations_with_pending()}
        assert left == {chat(n) for n in range(FLOOD)} - answered
    settings = Settings(database={"url": database_url})  # type: ignore[arg-type]
    async with Parley(settings, backend=ScriptedBackend()) as again:
        after = CollectingSink()
        again.manager.attach("test", after)
        assert await again.manager.recover() == FLOOD - PLACES
        await again.manager.wait_idle()
        assert after.replies == {k: [f"echo: hello {k.chat_id[6:]}"] for k in left}
        assert await again.store.conversations_with_pending() == []


async def test_a_message_that_comes_during_a_failing_turn_is_answered_by_its_own_turn(
    database_url: str,
) -> None:
    """A message recorded while its conversation's turn runs is left to that turn's task (it
    runs again). A turn that failed ended the task without running again, the message left
    pending for the sweep alone (none here): handle() returned without its answer."""
    command = FailsOnce()
    async with worker(database_url, ScriptedBackend(), sweep_interval_s=0) as (app, sink):
        app.router.add(Command("fail", "fails once", command))
        chat0 = chat(0)
        try:
            await app.manager.submit(message(chat0, "/fail", "first"))
            await command.running.wait()
            second = await app.manager.submit(message(chat0, "hello", "second"))
            command.fail.set()
            await app.manager.wait_idle(second.conversation_id)  # as handle() waits
        finally:
            command.fail.set()
        assert sink.replies[chat0] == ["done", "echo: hello"]
        assert await app.store.conversations_with_pending() == []


async def test_a_turn_cancelled_before_it_began_leaves_its_conversation(database_url: str) -> None:
    """A stop with no grace cancels a conversation's task that has not begun yet: its code
    never ran, so neither did the cleanup that takes the conversation out of those running,
    and wait_idle (handle(), the console) went round for ever on the task that had ended."""
    async with worker(database_url, ScriptedBackend()) as (app, sink):
        recorded = await app.manager.submit(message(chat(0), "hello", "hello"))
        assert await app.manager.drain(timeout_s=0) is False
        async with asyncio.timeout(30):  # a guard: it never returned
            await app.manager.wait_idle(recorded.conversation_id)
        assert sink.replies == {}
        assert [k for _, k in await app.store.conversations_with_pending()] == [chat(0)]


async def test_a_backlog_as_large_as_the_places_leaves_one_to_new_messages(
    database_url: str,
) -> None:
    """max_turns at or below backlog_turns (whose default, database.pool_size, is 10): the
    backlog took every place, and a new message waited for one of its turns to end."""
    backend = HeldBackend(free={LIVE})
    async with backlog_of(database_url, backend, max_turns=3) as (app, sink):  # backlog_turns 3
        assert await app.manager.recover() == BACKLOG
        await backend.holding(2)
        async with asyncio.timeout(30):  # a guard: it waited for the backlog's held turns
            await app.manager.handle(message(LIVE, "still there?", "live-1"))
        assert sink.replies[LIVE] == ["echo: still there?"]
        assert backend.most_held == 2
        backend.release.set()
        await app.manager.wait_idle()
        assert backend.most_held == 2
        assert all(sink.replies[key(n)] == [f"echo: question {n}"] for n in range(BACKLOG))
        assert await app.store.conversations_with_pending() == []


class OneByOne(HeldBackend):
    """Holds every answer until its conversation is let go (`let_go`), or all of them
    (`release`), and keeps whose requests it holds now."""

    def __init__(self) -> None:
        super().__init__(free=set())
        self.sessions: list[str] = []
        self._go: dict[str, asyncio.Event] = {}
        self._now = asyncio.Condition()

    def let_go(self, at: ConversationKey) -> None:
        self._go.setdefault(str(at), asyncio.Event()).set()

    async def holds(self, at: ConversationKey) -> None:
        async with self._now:
            await self._now.wait_for(lambda: str(at) in self.sessions)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        session = request.session_id or ""
        async with self._now:
            self.sessions.append(session)
            self._now.notify_all()
        go = self._go.setdefault(session, asyncio.Event())
        try:
            waits = [asyncio.create_task(go.wait()), asyncio.create_task(self.release.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        finally:
            self.sessions.remove(session)
        async for chunk in ScriptedBackend.stream(self, request):
            yield chunk


async def test_a_flood_of_new_messages_leaves_the_backlog_one_place(database_url: str) -> None:
    """Every place taken by new messages, and more of them waiting, when the recovery finds
    a backlog: new messages took each place that freed, so under a flood that never ebbs the
    backlog (older than all of them) never ran. The next free place goes to it now, while
    no turn of the backlog runs; the others still go to new messages first."""
    backend = OneByOne()
    async with backlog_of(database_url, backend, max_turns=PLACES, backlog_turns=2) as (
        app,
        sink,
    ):
        try:
            for n in range(2 * PLACES):
                await app.manager.submit(message(chat(n), f"new {n}", f"new-{n}"))
            for n in range(PLACES):
                await backend.holds(chat(n))
            # It finds the new messages' conversations too; they keep their places.
            assert await app.manager.recover() == BACKLOG + 2 * PLACES
            assert app.manager.turns_waiting() == {"new": PLACES, "backlog": BACKLOG}
            backend.let_go(chat(0))
            async with asyncio.timeout(30):
                await backend.holds(key(0))
            assert app.manager.turns_waiting() == {"new": PLACES, "backlog": BACKLOG - 1}
            backend.let_go(chat(1))  # one of the backlog's runs: new messages first again
            async with asyncio.timeout(30):
                await backend.holds(chat(PLACES))
            assert app.manager.turns_waiting() == {"new": PLACES - 1, "backlog": BACKLOG - 1}
            for n in range(2 * PLACES):
                backend.let_go(chat(n))
            for n in range(BACKLOG):
                backend.let_go(key(n))
            await app.manager.wait_idle()
        finally:
            for n in range(2 * PLACES):
                backend.let_go(chat(n))
            for n in range(BACKLOG):
                backend.let_go(key(n))
        assert all(sink.replies[key(n)] == [f"echo: question {n}"] for n in range(BACKLOG))
        assert all(sink.replies[chat(n)] == [f"echo: new {n}"] for n in range(2 * PLACES))
        assert await app.store.conversations_with_pending() == []
