"""The console while PostgreSQL is out of reach: a line typed during the outage is kept and
sent once the database is back, then answered once; the console neither ends nor loses it.
It ended with "the console adapter failed: database error: ConnectionRefusedError" (exit 3),
and the line was never recorded, whatever the outage's length (an operator's review: a
proxy in front of PostgreSQL killed for a second)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from adapters.console import ConsoleAdapter, ConsoleSettings
from bot.app import Parley
from bot.errors import StorageError
from bot.settings import Settings
from bot.storage import migrate
from bot.storage.base import MessageKind
from bot.storage.database import create_engine
from bot.storage.models import ConversationRow
from bot.types import Incoming, utcnow
from tests.crash_cluster import TcpProxy
from tests.doubles import ScriptedBackend
from tests.test_sup_outage import stored_copies


class Screen:
    """The console's stdout, which a test can wait on."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = asyncio.Condition()
        self._loop = asyncio.get_running_loop()

    def write(self, text: str) -> int:
        self.text += text
        self._loop.create_task(self._notify())
        return len(text)

    def flush(self) -> None:
        pass

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def shows(self, text: str, console: asyncio.Task[None]) -> None:
        """Wait until `text` is on the screen; the console's own error if it ended first."""
        async with asyncio.timeout(60), self._changed:
            await self._changed.wait_for(lambda: text in self.text or console.done())
        if text not in self.text:
            console.result()  # raises what ended it
            raise AssertionError(f"the console ended before it showed {text!r}")


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    target = sa.make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.aclose()


async def test_a_line_typed_while_the_database_is_down_is_kept_and_answered_once(
    postgres_url: str, proxy: TcpProxy
) -> None:
    await migrate.upgrade(postgres_url)
    through = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    settings = Settings(
        database={"url": through.render_as_string(hide_password=False)},  # type: ignore[arg-type]
        conversation={"sweep_interval_s": 0.2, "orphan_after_s": 0.5},  # type: ignore[arg-type]
    )
    read_end, write_end = os.pipe()
    typed = os.fdopen(write_end, "w", buffering=1)
    screen = Screen()
    async with Parley(settings, backend=ScriptedBackend()) as app:
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(chat="outage"), stdin=os.fdopen(read_end),
            stdout=screen, interactive=True,  # type: ignore[arg-type]
        )  # fmt: skip
        app.intake.register(console.platform, console, ConsoleSettings().access)
        running = asyncio.create_task(console.run())
        running.add_done_callback(lambda _: screen.write(""))  # wakes a wait on the screen
        try:
            typed.write("before the outage\n")
            # Answered and recorded: the console asks for the next line.
            await screen.shows("echo: before the outage\nyou> ", running)
            proxy.cut(3600)  # until restored: every connection reset, new ones refused
            typed.write("during the outage\n")
            await screen.shows("cannot reach the database", running)
        finally:
            proxy.cut(0)  # PostgreSQL is back
        await screen.shows("echo: during the outage", running)
        typed.close()
        async with asyncio.timeout(60):
            await running
    assert screen.text.count("echo: during the outage") == 1
    assert await stored_copies(postgres_url, "during the outage") == 1


async def test_the_database_going_down_while_the_console_waits_for_an_answer(
    postgres_url: str, proxy: TcpProxy
) -> None:
    """The console waits for its line to be answered before it reads the next, looking at
    the pending messages every second while an earlier run's unfinished answer holds the
    chat: one look that failed ended the console in the same way."""
    await migrate.upgrade(postgres_url)
    through = sa.make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    settings = Settings(
        database={"url": through.render_as_string(hide_password=False)},  # type: ignore[arg-type]
        conversation={"delivery_grace_s": 2.0},  # type: ignore[arg-type]
    )
    screen = Screen()
    async with Parley(settings, backend=ScriptedBackend()) as app:
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(chat="held"), stdin=io.StringIO("q2\n"),
            stdout=screen, interactive=False,  # type: ignore[arg-type]
        )  # fmt: skip
        # A crashed run's question, its answer begun, its process gone (seen just now).
        asked = Incoming(console.key, console.user, "q1", idempotency_key="console:crashed")
        q1 = await app.store.record_incoming(asked, kind=MessageKind.CHAT, token_count=2)
        async with app.store.engine.begin() as conn:
            await conn.execute(
                sa.update(ConversationRow)
                .where(ConversationRow.id == q1.conversation_id)
                .values(delivery_from=q1.message_id, delivery_to=q1.message_id,
                        delivery_epoch=99, delivery_owner="crashed-run",
                        delivery_seen=utcnow())
            )  # fmt: skip
        app.intake.register(console.platform, console, ConsoleSettings().access)
        running = asyncio.create_task(console.run())
        running.add_done_callback(lambda _: screen.write(""))
        async with asyncio.timeout(60):  # q2 recorded: the console now looks every second
            while await stored_copies(postgres_url, "q2") == 0:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        proxy.cut(3600)
        try:
            for _ in range(30):  # three of its looks fail meanwhile
                await asyncio.sleep(0.1)
                assert not running.done(), running.exception()
        finally:
            proxy.cut(0)
        await screen.shows("echo: q2", running)
        async with asyncio.timeout(60):
            await running
    assert console.unanswered == 0
    assert screen.text.count("echo: q2") == 1


async def test_a_database_that_refuses_the_line_ends_the_console_at_once(
    postgres_url: str,
) -> None:
    """Only an outage is waited for: a database that answers and refuses (read-only here;
    a full disk, a missing permission) was retried for ever under the notice that it could
    not be reached (a review of the retry)."""
    await migrate.upgrade(postgres_url)
    name = sa.make_url(postgres_url).database
    admin = create_engine(postgres_url)
    screen = Screen()
    try:
        async with Parley(Settings(database={"url": postgres_url})) as app:  # type: ignore[arg-type]
            console = ConsoleAdapter(
                app.intake, ConsoleSettings(chat="refused"), stdin=io.StringIO("hello\n"),
                stdout=screen, interactive=False,  # type: ignore[arg-type]
            )  # fmt: skip
            app.intake.register(console.platform, console, ConsoleSettings().access)
            async with admin.connect() as conn:
                await conn.execute(
                    sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
                )
                await conn.commit()
            await app.store.engine.dispose()  # new connections: read-only sessions
            with pytest.raises(StorageError, match="ReadOnlySQLTransaction"):
                async with asyncio.timeout(60):
                    await console.run()
    finally:
        async with admin.connect() as conn:
            await conn.execute(
                sa.text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
            )
            await conn.commit()
        await admin.dispose()
    assert "cannot reach the database" not in screen.text
