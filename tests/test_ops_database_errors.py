"""Operator-facing database failures said in words: a full disk, a read-only database file, a
PostgreSQL server out of connections or refusing the login. Before, `parley support` on a full
SQLite disk said only "database error: OperationalError" (an operator's report)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import Pool

from adapters.console import ConsoleAdapter, ConsoleSettings
from bot.app import Parley
from bot.cli import main
from bot.errors import StorageError
from bot.settings import Settings
from bot.storage.database import create_engine, describe_error, known_failure, run_on_connection
from tests.doubles import ScriptedBackend
from tests.support_helpers import bearer, new_visitor, support_worker
from tests.test_console_outage import Screen

SECRET_TEXT = "my card is 4111 1111 1111 1111"


@pytest.fixture
def full_disk() -> Iterator[list[bool]]:
    """While its flag is set, every SQLite connection taken from a pool can grow its file no
    further: SQLite then fails a write that needs a new page with SQLITE_FULL, as on a full
    disk (`PRAGMA max_page_count` below the file's size pins it at that size)."""
    full = [False]

    def pin(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if full[0]:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA max_page_count = 1")
            finally:
                cursor.close()

    event.listen(Pool, "checkout", pin)
    try:
        yield full
    finally:
        event.remove(Pool, "checkout", pin)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    monkeypatch.delenv("PARLEY_DATABASE__URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_parley_support_on_a_full_disk_says_the_disk_is_full(
    home: Path, full_disk: list[bool], capsys: pytest.CaptureFixture[str]
) -> None:
    database = home / "full.db"
    prompt = home / "prompt.txt"
    prompt.write_text("You are a helper.\n" * 4000, encoding="utf-8")  # pages beyond the file's
    url = f"sqlite+aiosqlite:///{database}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PARLEY_DATABASE__URL", url)
        assert main(["support", "site", "list"]) == 0
        capsys.readouterr()
        full_disk[0] = True
        status = main(["support", "site", "add", "shop", "--origin", "https://a.example",
                       "--prompt-file", str(prompt)])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 3, err
    assert err.strip().splitlines() == [
        f"parley: error: database error: the disk holding {database} or the one of SQLite's "
        "temporary files (SQLITE_TMPDIR, TMPDIR, /var/tmp or /tmp) is full "
        "(or the database reached its size limit)"
    ]


async def test_a_full_disk_on_a_store_call_is_one_line_naming_the_file(
    tmp_path: Path, full_disk: list[bool]
) -> None:
    database = tmp_path / "full.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")

    async def fill(conn: Any) -> None:
        await conn.execute(sa.text("CREATE TABLE IF NOT EXISTS t (x TEXT)"))
        for _ in range(50):
            await conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": "x" * 4000})

    try:
        await run_on_connection(engine, lambda conn: conn.execute(sa.text("SELECT 1")))
        full_disk[0] = True
        with pytest.raises(StorageError) as raised:
            await run_on_connection(engine, fill, write=True)
    finally:
        await engine.dispose()
    assert str(raised.value) == (
        f"database error: the disk holding {database} or the one of SQLite's temporary "
        "files (SQLITE_TMPDIR, TMPDIR, /var/tmp or /tmp) is full "
        "(or the database reached its size limit)"
    )


async def test_a_read_only_database_file_is_said_so(tmp_path: Path) -> None:
    database = tmp_path / "ro.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.close()
    url = f"sqlite+aiosqlite:///{database}?mode=ro&uri=true"
    engine = create_engine(f"sqlite+aiosqlite:///file:{database}?mode=ro&uri=true")

    async def write(conn: Any) -> None:
        await conn.execute(sa.text("INSERT INTO t VALUES (1)"))

    try:
        with pytest.raises(StorageError) as raised:
            await run_on_connection(engine, write, write=True)
    finally:
        await engine.dispose()
    assert "is read-only" in str(raised.value), str(raised.value)
    assert known_failure(raised.value, url).startswith(f"the database {database} is read-only")


async def test_a_visitor_whose_message_meets_a_full_disk_gets_the_short_503(
    tmp_path: Path, full_disk: list[bool], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/support.db"
    async with support_worker(url, redis_url=None) as worker:
        site = await worker.add_site("shop")
        async with worker.client() as client:
            visitor = await new_visitor(client, site)
            full_disk[0] = True
            headers = {**bearer(visitor["token"]), "Idempotency-Key": "full-1"}
            with caplog.at_level(logging.WARNING):
                refused = await client.post(
                    "/v1/messages", headers=headers, json={"text": SECRET_TEXT * 200}
                )
            full_disk[0] = False
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "unavailable"
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert said and not [r for r in said if r.exc_info]
    assert any("is full" in r.getMessage() for r in said), [r.getMessage() for r in said]
    # The API has no URL at hand: the line names the file all the same, as the store saw it.
    database = f"the disk holding {tmp_path}/support.db or"
    assert any(database in r.getMessage() for r in said), [r.getMessage() for r in said]
    assert not [r for r in said if "4111" in r.getMessage()]


async def test_the_console_on_a_full_disk_says_so_not_that_it_cannot_reach_the_database(
    tmp_path: Path, full_disk: list[bool]
) -> None:
    """A full disk is waited out as an outage is (the line is kept and sent again), but the
    console said "Parley cannot reach the database", which sent the operator to the network:
    it shows known_failure's line, the file named."""
    database = tmp_path / "console.db"
    settings = Settings(database={"url": f"sqlite+aiosqlite:///{database}"})  # type: ignore[arg-type]
    async with Parley(settings, backend=ScriptedBackend()) as app:
        screen = Screen()
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(), stdin=io.StringIO("x" * 7000 + "\n"), stdout=screen,
            interactive=False,  # type: ignore[arg-type]
        )  # fmt: skip
        app.intake.register(console.platform, console, ConsoleSettings().access)
        full_disk[0] = True
        await app.store.engine.dispose()  # new connections: pinned at their size
        running = asyncio.create_task(console.run())
        running.add_done_callback(lambda _: screen.write(""))  # wakes a wait on the screen
        try:
            await screen.shows("It is kept here", running)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            full_disk[0] = False
    assert "cannot reach the database" not in screen.text
    assert f"(The database cannot take your message now: the disk holding {database} or " in (
        screen.text
    )


async def _as_admin(postgres_url: str, *statements: str) -> None:
    admin = create_engine(postgres_url)
    try:
        async with admin.begin() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await admin.dispose()


async def _connect_failure(url: str) -> str:
    """The one line a first statement on `url` fails with."""
    engine = create_engine(url)
    try:
        with pytest.raises(StorageError) as raised:
            await run_on_connection(engine, lambda conn: conn.execute(sa.text("SELECT 1")))
    finally:
        await engine.dispose()
    return str(raised.value)


async def _refusal_as(postgres_url: str, username: str) -> str:
    """The one line a first statement run as `username` (no password) fails with."""
    url = sa.make_url(postgres_url).set(username=username, password=None)
    return await _connect_failure(url.render_as_string(hide_password=False))


@pytest.mark.postgres
async def test_postgres_out_of_connections_is_said_so(postgres_url: str) -> None:
    role = f"parley_ops_{uuid.uuid4().hex[:8]}"
    await _as_admin(postgres_url, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        said = await _refusal_as(postgres_url, role)
    finally:
        await _as_admin(postgres_url, f"DROP ROLE {role}")
    assert "too many connections" in said, said
    assert "max_connections" in said


def test_postgres_disk_full_and_a_refused_password_are_said_so() -> None:
    url = "postgresql+asyncpg://parley:hunter2@db.example/parley"
    disk = asyncpg.exceptions.DiskFullError('could not extend file "base/1/2": No space left')
    refused = asyncpg.exceptions.InvalidPasswordError("password authentication failed for user")
    assert describe_error(disk, url).startswith("database error: the PostgreSQL server's disk is")
    assert describe_error(disk, url).endswith("(server db.example, database parley)")
    assert "refused the password" in describe_error(refused, url)
    assert "hunter2" not in describe_error(refused, url)


def test_an_unknown_failure_is_said_as_before() -> None:
    plain = sqlite3.OperationalError("no such table: t")
    assert known_failure(plain, "sqlite+aiosqlite:///x.db") == ""
    assert describe_error(plain, "sqlite+aiosqlite:///x.db") == (
        "database error: OperationalError: no such table: t"
    )


def test_a_uri_that_urlsplit_refuses_keeps_sqlites_own_line() -> None:
    """`file://[x/db?uri=true` passes the settings; SQLite refuses it ("invalid uri
    authority"). describe_error said that; reading the URI for a file to name raised
    ValueError (Invalid IPv6 URL) out of describe_error: a traceback instead of the line."""
    url = "sqlite+aiosqlite:///file://[x/db?uri=true"
    refused = sqlite3.OperationalError("invalid uri authority: [x")
    assert describe_error(refused, url) == (
        "database error: OperationalError: invalid uri authority: [x"
    )
    full = sqlite_full_error()
    assert known_failure(full, url).startswith("the database's disk or ")
    assert known_failure(full, "not a URL at all").startswith("the database's disk or ")


def sqlite_full_error() -> sqlite3.Error:
    """SQLite's own SQLITE_FULL: a table that needs a page past `max_page_count`."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("PRAGMA max_page_count = 1")
        with pytest.raises(sqlite3.OperationalError) as raised:
            conn.execute("CREATE TABLE t (x)")
    finally:
        conn.close()
    assert raised.value.sqlite_errorname == "SQLITE_FULL"
    return raised.value


def test_a_full_temporary_folder_is_not_said_to_be_the_databases_disk(tmp_path: Path) -> None:
    """SQLite says SQLITE_FULL when its temporary files cannot grow (a sort, an index built by
    a migration, in a container's small /tmp) while the database's own disk has room: the
    line named only the database's disk, which an operator then found with room to spare.
    Here SQLite's temporary storage is full by its page limit, the database file is not."""
    database = tmp_path / "roomy.db"
    conn = sqlite3.connect(database)
    try:
        conn.execute("PRAGMA temp_store = FILE")
        conn.execute("CREATE TEMP TABLE scratch (x)")
        conn.execute("PRAGMA temp.max_page_count = 2")
        with pytest.raises(sqlite3.OperationalError) as raised:
            conn.execute("INSERT INTO scratch VALUES (?)", ("x" * 100_000,))
    finally:
        conn.close()
    assert raised.value.sqlite_errorname == "SQLITE_FULL"
    said = describe_error(raised.value, f"sqlite+aiosqlite:///{database}")
    assert said == (
        f"database error: the disk holding {database} or the one of SQLite's temporary files "
        "(SQLITE_TMPDIR, TMPDIR, /var/tmp or /tmp) is full (or the database reached its size "
        "limit)"
    )


@pytest.mark.postgres
async def test_postgres_out_of_the_databases_connections_names_that_limit(
    postgres_url: str,
) -> None:
    """53300 is also the database's own limit (ALTER DATABASE ... CONNECTION LIMIT): the line
    told the operator to raise max_connections or the role's limit, neither of which helps
    (PostgreSQL's own text said "too many connections for database")."""
    role = f"parley_ops_{uuid.uuid4().hex[:8]}"
    database = sa.make_url(postgres_url).database
    limit = f'ALTER DATABASE "{database}" CONNECTION LIMIT'
    await _as_admin(postgres_url, f"CREATE ROLE {role} LOGIN", f"{limit} 0")
    try:
        said = await _refusal_as(postgres_url, role)
    finally:
        await _as_admin(postgres_url, f"{limit} -1", f"DROP ROLE {role}")
    assert "too many connections" in said, said
    assert "the database's connection limit" in said, said


@pytest.mark.postgres
async def test_postgres_login_as_a_role_that_does_not_exist_names_the_role_as_a_cause(
    postgres_url: str,
) -> None:
    """28000 is what PostgreSQL answers for a role that does not exist as well as for a
    pg_hba.conf that lets it in nowhere: the line pointed at pg_hba.conf alone."""
    said = await _refusal_as(postgres_url, f"nobody_{uuid.uuid4().hex[:8]}")
    assert "no such role" in said, said
    assert "nobody_" not in said


def test_a_password_holding_an_at_sign_is_not_named_as_the_server() -> None:
    """A password written with a raw "@" (not %40) is cut at it: SQLAlchemy reads what follows
    as the host, or the database, and asyncpg, given `?host=`, still reaches the server, whose
    refusal of the password (the first part only) named the rest as "server ss@". Where the
    host or the database holds an "@", neither is named."""
    refused = asyncpg.exceptions.InvalidPasswordError("password authentication failed for user")
    for url in (
        "postgresql+asyncpg://parley:hun@ter2@/parley?host=/run/postgresql",
        "postgresql+asyncpg://parley:hun@ter2@db.example/parley",
        "postgresql+asyncpg://parley:hun@ter/2@db.example/parley",
    ):
        said = describe_error(refused, url)
        assert "refused the password" in said, said
        assert "ter" not in said, said
    full = asyncpg.exceptions.DiskFullError("could not extend file")
    assert "ter" not in known_failure(full, sa.make_url("postgresql://u:hun@ter@h/db"))


@pytest.mark.postgres
async def test_a_database_that_does_not_exist_says_what_to_do(postgres_url: str) -> None:
    """A database name that the server does not have was the driver's class and sentence
    (`InvalidCatalogNameError: database "x" does not exist`), which says nothing to do."""
    missing = f"nowhere_{uuid.uuid4().hex[:8]}"
    url = sa.make_url(postgres_url).set(database=missing)
    said = await _connect_failure(url.render_as_string(hide_password=False))
    assert "does not exist on the PostgreSQL server: create it (createdb)" in said, said
    assert said.endswith(f"database {missing})"), said


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The system's resolver, for the host names given (name -> the getaddrinfo error code it
    fails with); the rest as the system resolves them. A real lookup of a `.invalid` name went
    to DNS: on a machine without one it waited out the resolver's timeouts, then failed with
    another code (EAI_AGAIN) than on one with DNS."""
    failing: dict[str, int] = {}
    system = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in failing:
            raise socket.gaierror(failing[host], f"getaddrinfo error {failing[host]}")
        return system(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return failing


async def test_a_host_name_that_does_not_resolve_is_said_so(resolver: dict[str, int]) -> None:
    """A host name nothing resolves was "gaierror: [Errno -2] Name or service not known",
    naming neither the host nor the setting to check."""
    resolver["db.nowhere.invalid"] = socket.EAI_NONAME
    said = await _connect_failure(
        "postgresql+asyncpg://parley:hunter2@db.nowhere.invalid:5432/parley"
    )
    assert "host name cannot be found" in said, said
    assert "check the host in database.url" in said
    assert said.endswith("(server db.nowhere.invalid:5432, database parley)"), said
    assert "hunter2" not in said


async def test_a_resolver_that_does_not_answer_is_not_said_to_be_a_wrong_host(
    resolver: dict[str, int],
) -> None:
    """EAI_AGAIN is DNS not answering (no DNS server reachable, a container's network
    down), not a name it does not know: "no such host ... check the host in database.url"
    sent the operator to a host name that was right."""
    resolver["db.example"] = socket.EAI_AGAIN
    said = await _connect_failure("postgresql+asyncpg://parley:hunter2@db.example/parley")
    assert "no such host" not in said, said
    assert "DNS did not answer" in said, said
    assert said.endswith("(server db.example, database parley)"), said
