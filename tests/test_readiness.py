"""`/readyz`: unready when PostgreSQL is cut, ready again once it is back; unready while the
schema is behind the code's; cached, so a balancer polling it does not hammer the dependencies.

PostgreSQL is cut with a TCP relay between Parley and the server that the test closes
(listener and open connections) and reopens on the same port: what a network partition or a
restarting server looks like from the worker, without touching the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from adapters.kit.http import HttpHost
from bot.app import Parley
from bot.readiness import ReadinessProbe, model_server_urls, readiness
from bot.settings import BackendSettings, HttpSettings, Settings
from bot.storage import migrate
from tests.ports import free_port


class Relay:
    """A TCP relay on 127.0.0.1:`port` to `target` that can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = free_port()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # a partition: no goodbye to either side
        await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@contextlib.asynccontextmanager
async def relayed(url: str) -> AsyncIterator[tuple[Relay, str]]:
    parsed = make_url(url)
    relay = Relay((parsed.host or "127.0.0.1", parsed.port or 5432))
    await relay.open()
    try:
        yield relay, parsed.set(host="127.0.0.1", port=relay.port).render_as_string(False)
    finally:
        with contextlib.suppress(Exception):
            await relay.cut()


async def get_ready(host: HttpHost) -> httpx.Response:
    transport = httpx.ASGITransport(app=host.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://p") as client:
        return await client.get("/readyz")


@pytest.mark.postgres
async def test_unready_while_postgres_is_cut_and_ready_again_after(postgres_url: str) -> None:
    await migrate.upgrade(postgres_url)
    async with relayed(postgres_url) as (relay, url):
        settings = Settings(database={"url": url}, knowledge={"load_sample": False})  # type: ignore[arg-type]
        async with Parley(settings) as app:
            host = HttpHost(HttpSettings(), ready=ReadinessProbe(app, ttl_s=0))
            assert (await get_ready(host)).text == "ready"

            await relay.cut()
            cut = await get_ready(host)
            assert cut.status_code == 503
            # The cause, as docs/operations.md shows it, not Parley's StorageError around it.
            assert cut.text == "database: ConnectionRefusedError"
            assert "127.0.0.1" not in cut.text and "postgres" not in cut.text.split(": ", 1)[1]

            await relay.open()
            back = await get_ready(host)
            assert (back.status_code, back.text) == (200, "ready")


@pytest.mark.postgres
async def test_a_pool_every_turn_holds_is_busy_not_unready(postgres_url: str) -> None:
    """Every connection of the main pool held (turns in flight under load): the database
    still answers, so the worker stays ready. Asked on that pool, the check waited for a
    connection and said "database: no answer in time", and a balancer would take every busy
    worker out at once."""
    await migrate.upgrade(postgres_url)
    settings = Settings(
        database={"url": postgres_url, "pool_size": 1},  # type: ignore[arg-type]
        knowledge={"load_sample": False},  # type: ignore[arg-type]
    )
    async with Parley(settings) as app:
        engine = app.store.engine
        async with engine.connect():  # the whole pool (no overflow)
            assert engine.pool.checkedout() == 1
            assert await readiness(app) == []
            assert await app.manager.database_answers()


async def test_unready_while_the_schema_is_downgraded_under_it(database_url: str) -> None:
    """An operator downgraded the schema (`parley db downgrade`, or `alembic` from another
    host) under a running worker, which cannot do its work on it: /readyz said "ready"."""
    settings = Settings(database={"url": database_url}, knowledge={"load_sample": False})  # type: ignore[arg-type]
    async with Parley(settings) as app:
        host = HttpHost(HttpSettings(), ready=ReadinessProbe(app, ttl_s=0))
        assert (await get_ready(host)).text == "ready"
        head = migrate.head()

        await migrate.downgrade(database_url, "-1")
        below = await migrate.current(database_url)
        assert below is not None and below != head
        down = await get_ready(host)
        assert (down.status_code, down.text) == (
            503,
            f"database: schema at revision {below}, this worker needs {head}: "
            "run `parley db upgrade`",
        )

        await migrate.upgrade(database_url)
        back = await get_ready(host)
        assert (back.status_code, back.text) == (200, "ready")


async def test_a_schema_a_newer_parley_migrated_keeps_it_ready(tmp_path: Path) -> None:
    """A release runs `parley db upgrade` first: the old workers serve on until they are
    replaced, rather than all leaving the balancer at once."""
    async with Parley(_sqlite(tmp_path)) as app:
        async with app.store.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999_newer'"))
        assert await readiness(app) == []


async def test_the_schema_check_reads_the_migrations_off_the_event_loop(tmp_path: Path) -> None:
    """The first check reads migrations/versions to know the code's revisions (Alembic loads
    each revision's module, tens of ms): it did so on the event loop, and every turn of the
    worker waited meanwhile. Watched through Python's audit events for the folder's files."""
    folder = str(migrate.MIGRATIONS_DIR)
    watching: list[bool] = []
    read_on: list[int] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if watching and event in _READS and args and str(args[0]).startswith(folder):
            read_on.append(threading.get_ident())

    sys.addaudithook(audit)  # for good (audit hooks cannot be removed): idle unless watching
    async with Parley(_sqlite(tmp_path)) as app:
        migrate._revisions.cache_clear()  # read by an earlier test of this process
        watching.append(True)
        try:
            assert await readiness(app) == []
        finally:
            watching.clear()
    assert read_on, "the revisions were not read from migrations/versions"
    assert threading.get_ident() not in read_on


# Python's audit events of reading a folder and opening its files (listed, then imported).
_READS = frozenset({"open", "os.listdir", "os.scandir"})


async def test_stopping_answers_unready_without_asking(tmp_path: Path) -> None:
    asked: list[int] = []

    async def never_called(app: Parley) -> list[str]:
        asked.append(1)
        return []

    async with Parley(_sqlite(tmp_path)) as app:
        host = HttpHost(HttpSettings(), ready=ReadinessProbe(app, check=never_called))
        host.draining = True
        assert (await get_ready(host)).status_code == 503
    assert asked == []


async def test_answers_are_cached_for_the_ttl(tmp_path: Path) -> None:
    now = [0.0]
    rounds: list[int] = []

    async def counted(app: Parley) -> list[str]:
        rounds.append(1)
        return await readiness(app)

    async with Parley(_sqlite(tmp_path)) as app:
        probe = ReadinessProbe(app, ttl_s=3.0, clock=lambda: now[0], check=counted)
        answers = await asyncio.gather(*(probe() for _ in range(20)))
        assert answers == [[]] * 20 and len(rounds) == 1
        now[0] = 2.9
        await probe()
        assert len(rounds) == 1
        now[0] = 3.0
        await probe()
        assert len(rounds) == 2


async def test_a_model_server_that_does_not_answer_makes_it_unready(tmp_path: Path) -> None:
    port = _closed_port()
    async with Parley(_sqlite(tmp_path)) as app:
        # Only the readiness check reads the backend section: the app runs without a model.
        app.settings.backend = BackendSettings(
            kind="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1"
        )
        assert model_server_urls(app.settings.backend) == [f"http://127.0.0.1:{port}/v1/models"]
        assert await readiness(app) == ["model server: ConnectError"]


async def test_a_model_server_that_takes_connections_and_never_answers(tmp_path: Path) -> None:
    """Naming the cause of a failure must not name asyncio's: a check's time limit raises
    TimeoutError from a CancelledError, and a helper's review found "CancelledError" there."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Parley(_sqlite(tmp_path)) as app:
            app.settings.backend = BackendSettings(
                kind="openai", model="m", base_url=f"http://127.0.0.1:{port}"
            )
            assert await readiness(app) == ["model server: no answer in time"]
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


def _sqlite(tmp_path: Path, **sections: Any) -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},  # type: ignore[arg-type]
        knowledge={"load_sample": False},  # type: ignore[arg-type]
        **sections,
    )


@pytest.mark.redis
async def test_redis_is_checked_when_configured(tmp_path: Path, redis_url: str) -> None:
    async with Parley(_sqlite(tmp_path, redis={"url": redis_url})) as app:
        assert await readiness(app) == []
    dead = f"redis://127.0.0.1:{_closed_port()}/0"
    async with Parley(_sqlite(tmp_path, redis={"url": dead, "socket_timeout_s": 0.5})) as app:
        # The cause is named, as for the database: here nothing listens on the port.
        assert await readiness(app) == ["redis: ConnectionRefusedError"]


def _closed_port() -> int:
    return free_port()  # nobody listens on it (nor may another process's server)
