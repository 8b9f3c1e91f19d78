"""Engines for the history database: an SQLite file by default, PostgreSQL in production.

How `SqlStore` runs its statements on them is `bot.storage.runners`: SQLAlchemy's AsyncEngine,
the same way on both.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from sqlalchemy import URL, Executable, Row, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import NullPool

from bot.errors import ConfigError, StorageError
from bot.outage import causes
from bot.storage.runners import admission

T = TypeVar("T")
log = logging.getLogger(__name__)

# WAL lets readers work while one writer commits; NORMAL is durable across application crashes
# in WAL mode (only an OS crash may lose the last commits); busy_timeout makes a second writer
# wait for the lock instead of failing at once with "database is locked".
# The busy timeout comes first, so that the pragmas after it wait for a lock as long as
# statements do (sqlite3.connect's own default is 5 s).
SQLITE_PRAGMAS = (
    # Writers queue for the lock; generous, because a loaded host stretches every commit.
    "PRAGMA busy_timeout=15000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
# What a migration sets on its connection (migrations/env.py): WAL is a property of the file,
# set once, by the process that creates or migrates it under the migration lock; the workers'
# connections then find the file in WAL already, and never convert it while another worker
# reads it (two workers starting together on a new file each tried to).
SQLITE_FILE_PRAGMAS = SQLITE_PRAGMAS[:2]

# What a database failure looks like: driver errors (wrapped by SQLAlchemy), an exhausted pool,
# and refused or timed-out connections, which some drivers raise unwrapped.
_COMMON_ERRORS: tuple[type[BaseException], ...] = (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError)

# Server connections older than this are replaced at checkout. There is no pre-ping (a round
# trip per checkout): a connection found dead is invalidated and the work retried once
# (retry_dead_connection).
POOL_RECYCLE_S = 1800


def lock_sqlite_file(url: str | URL, *, exclusive: bool) -> int | None:
    """A lock beside an SQLite file (`<file>.workers.lock`), held until its descriptor (returned)
    is closed or the process ends: shared by every store started on the file (a worker keeps
    ids and context windows of its own in memory), exclusive for `parley data forget`, which
    must not change what a running worker remembers. A shared one waits for an exclusive one
    (a forget takes a second); an exclusive one held elsewhere raises BlockingIOError. None
    where there is nothing to lock (PostgreSQL, an in-memory database, no fcntl, a folder the
    lock cannot be made in)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    parsed = make_url(url)
    path = _locked_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None:
        return None
    # Beside the file itself: a worker that opens it through a link locks the same file.
    path = os.path.realpath(path)
    try:
        fd = os.open(f"{path}.workers.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        if exclusive:
            raise
        return None
    return fd


def _locked_file(url: URL) -> str | None:
    """The file an SQLite URL opens, a URI's (`file:PATH?uri=true`) included: a worker on
    `file:/srv/parley.db?uri=true` and a command on `/srv/parley.db` lock the same file. None
    for an in-memory database."""
    path = url.database or ""
    if not path.startswith("file:") or str(url.query.get("uri", "")).lower() not in _TRUE:
        return path if path not in ("", ":memory:") else None
    uri = urlsplit(path)
    memory = str(url.query.get("mode", "")).lower() == "memory"
    if memory or uri.netloc not in ("", "localhost") or unquote(uri.path) in ("", ":memory:"):
        return None
    return unquote(uri.path)


_TRUE = ("1", "true", "yes", "on")


def create_engine(
    url: str,
    *,
    echo: bool = False,
    pool_size: int = 10,
    timeout_s: float | None = None,
    show_parameters: bool = False,
) -> AsyncEngine:
    """An async engine for `url` (sqlite+aiosqlite:// or postgresql+asyncpg://).

    `timeout_s` (PostgreSQL; `database.timeout_s` for a running worker): connecting, waiting
    for a pooled connection and each statement give up after it, so that a server that takes
    connections and never answers fails a request or a turn (503, a retry) instead of holding
    it for asyncpg's 60 s connect and without end on a statement. None: no limit on a
    statement (the command-line tools' long batch writes). SQLite waits for its file's lock
    by its busy timeout.

    `show_parameters` (`log_message_text`): statements' parameters, message text among them,
    in `echo`'s lines and in a failed statement's error (logged with a failed turn); without
    it SQLAlchemy leaves them out of both."""
    if echo:
        _echo_through_logging()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, pool_size=pool_size, show_parameters=show_parameters)
    limits: dict[str, Any] = {}
    if timeout_s is not None:
        # asyncpg's public connect() arguments, and the pool's wait for a connection.
        limits = {"connect_args": {"timeout": timeout_s, "command_timeout": timeout_s},
                  "pool_timeout": timeout_s}  # fmt: skip
    # No overflow: past pool_size a turn queues for a connection (its statements are short)
    # instead of opening one that is closed again on return, a new server process per
    # statement at high concurrency, and the worker's connections stay within pool_size.
    return _engine(
        parsed, pool_size=pool_size, max_overflow=0, pool_recycle=POOL_RECYCLE_S,
        hide_parameters=not show_parameters, **limits,
    )  # fmt: skip


def _engine(url: URL, **options: Any) -> AsyncEngine:
    # Statements' parameters (message text) out of errors and echo unless asked for.
    options.setdefault("hide_parameters", True)
    return refuse_unusable_arguments(_create_async_engine(url, **options))


def refuse_unusable_arguments(engine: AsyncEngine) -> AsyncEngine:
    """`engine`, whose driver's refusal of its connection arguments (the URL's parameters) is
    one ConfigError line instead of a traceback: asyncpg's connect() raises TypeError for a
    keyword it does not know, ValueError for a value it cannot read, OverflowError for a
    port past 65535. The settings refuse those they know of (bot.settings, database.url);
    this is the last resort for the rest, on the connect call alone, so a TypeError
    anywhere else is still the bug it is."""
    url = engine.url
    # A failure of the database or the network that is also a ValueError (an SSL certificate
    # that fails verification, asyncpg's ClientConfigurationError) stays what it was: a
    # StorageError where the driver's errors are caught, retried or reported as an outage.
    failures = database_errors(url)

    def connect_or_refuse(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)  # what SQLAlchemy would do without us
        except failures:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            log.debug("the database driver refused its connection arguments", exc_info=True)
            # describe_error masks the password; the URL itself is never shown.
            detail = describe_error(exc, url).removeprefix("database error: ")
            raise ConfigError(
                f"database.url: its driver cannot connect with the URL's parameters: {detail}"
            ) from None

    event.listen(engine.sync_engine, "do_connect", connect_or_refuse)
    return engine


def create_oneoff_engine(url: str | URL) -> AsyncEngine:
    """An engine for one command's connection, none kept once it is disposed of (NullPool):
    the schema's revision, and the migrations (bot.storage.migrate, migrations/env.py, also
    when `alembic` is run by hand). The same guards as `create_engine`'s: an SQLite URL's
    parameters checked and its folder made, the driver's refusal of its connection arguments
    one ConfigError line. No pragmas: a migration runs with SQLite's own settings."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        refuse_unusable_sqlite_parameters(parsed)
        ensure_sqlite_folder(parsed)
    return _engine(parsed, poolclass=NullPool)


def create_relaxed_engine(
    durable: AsyncEngine, *, pool_size: int, timeout_s: float | None = None
) -> AsyncEngine:
    """An engine for writes that need not wait for the disk, beside `durable` (same URL).

    PostgreSQL: its connections commit with `synchronous_commit = off`. Such a commit is
    visible to every session at once and survives any crash of Parley's own processes; only a
    crash of the database server itself may lose the last few hundred milliseconds of them
    (3 x wal_writer_delay), never corrupting anything, and any durable commit that follows
    flushes them too. Used for the lease's renewal and release, delivery progress notes,
    token usage and message signals: each is advisory, or settled by a later durable commit
    (docs/conversations.md). SQLite in WAL mode with synchronous=NORMAL already commits
    without a sync: there `durable` itself is returned.
    """
    if durable.dialect.name != "postgresql":
        return durable
    return _engine(
        durable.url,
        pool_size=pool_size,
        max_overflow=0,  # its writes are short: they queue rather than open more connections
        pool_recycle=POOL_RECYCLE_S,
        # asyncpg's public connect() argument: session settings sent with the start-up
        # packet, so the setting costs no round trip.
        connect_args={"server_settings": {"synchronous_commit": "off"}}
        | ({"timeout": timeout_s, "command_timeout": timeout_s} if timeout_s else {}),
        **({"pool_timeout": timeout_s} if timeout_s else {}),
    )


def create_keeper_engine(durable: AsyncEngine, *, timeout_s: float) -> AsyncEngine:
    """One connection of its own for the turn leases' keeper (bot.storage.lease_keeper), so
    that a renewal never queues behind the turns' statements for a pooled connection.
    PostgreSQL: committed without waiting for the disk, as `create_relaxed_engine`'s, and a
    statement gives up after `timeout_s` (asyncpg's `command_timeout`: a lock held elsewhere
    or a network that stopped answering fails one renewal, tried again at the next period,
    instead of holding back every lease). An SQLite file: a connection of its own (its writes
    still queue for the file's lock). An in-memory SQLite database has one connection:
    `durable` itself."""
    if durable.dialect.name == "postgresql":
        return create_relaxed_engine(durable, pool_size=1, timeout_s=timeout_s)
    if sqlite_file(durable.url) is None:
        return durable
    return _sqlite_engine(durable.url, pool_size=1)


def database_errors(url: str | URL) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the database failed" for the driver of `url`."""
    if make_url(url).get_driver_name() != "asyncpg":
        return _COMMON_ERRORS
    import asyncpg  # present whenever an asyncpg URL works at all

    # asyncpg raises its own errors unwrapped while connecting (a wrong user or database name).
    return (*_COMMON_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError)


async def run_on_connection(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    write: bool = False,
    single: bool = False,
) -> T:
    """`work` on a connection of `engine` (in a transaction committed at the end when
    `write`), with the driver's failures turned into StorageError: the repositories' one way in.

    `single`: `work` writes with one statement, atomic by itself. On PostgreSQL it then runs
    in autocommit mode: the statement commits alone, with no BEGIN and COMMIT round trips
    around it (SQLite still needs its transaction to commit).

    A pooled connection the server closed fails `work`, which then runs once more from the
    start on a new connection (`retry_dead_connection`): what it did on the dead one was
    rolled back with it."""

    async def attempt() -> T:
        opened: AbstractAsyncContextManager[AsyncConnection]
        if single and engine.dialect.name == "postgresql":
            opened = engine.execution_options(isolation_level="AUTOCOMMIT").connect()
        else:
            opened = engine.begin() if write or single else engine.connect()
        # In the engine's one line for its connections, with the store's own calls.
        placed = admission(engine).place(write=write or single, urgent=False)
        async with placed, opened as conn:
            return await work(conn)

    return await retry_dead_connection(attempt, engine.url)


async def all_rows(
    conn: AsyncConnection, statement: Executable, params: Mapping[str, Any] | None = None
) -> Sequence[Row[Any]]:
    """The rows of `statement` on `conn`: read inside the work `run_on_connection` runs,
    before the connection goes back to the pool."""
    return (await conn.execute(statement, params)).all()


async def retry_dead_connection(attempt: Callable[[], Awaitable[T]], url: str | URL) -> T:
    """`attempt()`, run once more when it failed on a pooled connection found dead; every
    database failure raised as StorageError.

    There is no pre-ping (a round trip per checkout), so after the server restarted (or closed
    idle connections) the first use of each pooled connection fails. SQLAlchemy then sets
    `connection_invalidated` and invalidates the pool, which hands out new connections. One
    more try, not more: a server that is down fails the new connection too."""
    for last in (False, True):
        try:
            return await attempt()
        except database_errors(url) as exc:
            if not last and isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
                continue
            raise database_error(exc, url) from exc
    raise AssertionError("unreachable")  # the last attempt returned or raised


# PostgreSQL's SQLSTATEs an operator meets and can act on, in words (asyncpg's `sqlstate`).
_SQLSTATE_WORDS = {
    "53100": "the PostgreSQL server's disk is full (it could not extend a file: no space left "
    "on device)",
    # max_connections, a role's or a database's CONNECTION LIMIT: the same code for all three.
    "53300": "PostgreSQL has no connection to spare (too many connections): raise "
    "max_connections (or the role's or the database's connection limit), or lower "
    "database.pool_size or the number of workers",
    "28P01": "PostgreSQL refused the password (authentication failed): check database.url",
    "28000": "PostgreSQL refused the login (no such role, or pg_hba.conf has no entry letting "
    "it in): check the user in database.url and the server's pg_hba.conf",
    "3D000": "the database does not exist on the PostgreSQL server: create it (createdb) or "
    "fix its name in database.url",
}
# A host name that does not resolve (a typo, a container name outside its network).
_NO_SUCH_HOST = (
    "the database server's host name cannot be found (no such host in DNS or /etc/hosts): "
    "check the host in database.url"
)
# EAI_AGAIN (and EAI_FAIL): no DNS server answered, which says nothing of the name itself.
_NO_DNS_ANSWER = (
    "DNS did not answer for the database server's host name (no DNS server reachable, or a "
    "temporary failure): check the machine's or the container's DNS, then the host in "
    "database.url"
)
_DNS_DOWN = {socket.EAI_AGAIN, socket.EAI_FAIL}


# Where SQLite keeps its temporary files on Unix, in its order of choice.
_SQLITE_TEMPORARY = "the one of SQLite's temporary files (SQLITE_TMPDIR, TMPDIR, /var/tmp or /tmp)"


def known_failure(exc: BaseException, url: str | URL | None) -> str:
    """`exc` in words an operator can act on, where its driver's code says what it is: a full
    disk, a read-only database file, a server out of connections or refusing the login, a
    database that does not exist, a host name that does not resolve; "" otherwise. Read
    through public attributes only (sqlite3's `sqlite_errorname`, asyncpg's `sqlstate`) and
    types (`socket.gaierror`) anywhere in its causes (bot.outage.causes), and built from no
    driver text, so it quotes no value and is safe wherever the class name alone was."""
    parsed = _readable_url(url)
    if parsed is None:  # said where it was raised, the database named, if it was
        said = [e.known for e in causes(exc) if isinstance(e, StorageError) and e.known]
        if said:
            return said[0]
    path = _named_file(parsed)
    for each in causes(exc):
        name = getattr(each, "sqlite_errorname", None)
        if isinstance(name, str) and name.startswith("SQLITE_FULL"):
            # SQLite says SQLITE_FULL for its temporary files too (a sort, an index built in a
            # migration), which are on another disk where TMPDIR or /tmp is small.
            where = f"the disk holding {path}" if path else "the database's disk"
            full = "is full (or the database reached its size limit)"
            return f"{where} or {_SQLITE_TEMPORARY} {full}"
        if isinstance(name, str) and name.startswith("SQLITE_READONLY"):
            return f"the database {path or 'file'} is read-only{_why_read_only(parsed)}"
        sqlstate = getattr(each, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate in _SQLSTATE_WORDS:
            return _SQLSTATE_WORDS[sqlstate] + _server(parsed)
        if isinstance(each, socket.gaierror):
            down = each.errno in _DNS_DOWN
            return (_NO_DNS_ANSWER if down else _NO_SUCH_HOST) + _server(parsed)
    return ""


def _server(url: URL | None) -> str:
    """Which PostgreSQL server and database `url` names (no user, no password), as a suffix.
    Nothing where either holds an "@": a password written with a raw "@" is cut at the first
    one, and the rest of it read as the host or the database."""
    if url is None or not url.host or "@" in url.host or "@" in (url.database or ""):
        return ""
    host = f"{url.host}:{url.port}" if url.port else url.host
    return f" (server {host}, database {url.database})" if url.database else f" (server {host})"


def database_error(exc: BaseException, url: str | URL) -> StorageError:
    """The StorageError a driver's failure is raised as: describe_error's line, and
    known_failure's words (naming the database) kept for a catcher without the URL."""
    error = StorageError(describe_error(exc, url))
    error.known = known_failure(exc, _readable_url(url))
    return error


def _readable_url(url: str | URL | None) -> URL | None:
    """`url` parsed; None where SQLAlchemy reads no URL in it (there is nothing to name)."""
    if not isinstance(url, str):
        return url
    try:
        return make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        return None


def _named_file(url: URL | None) -> str | None:
    """The SQLite file `url` opens, None where there is none to name: a URI urlsplit cannot
    read (`file://[x/...`) is one SQLite refuses in its own words, which describe_error
    keeps."""
    if url is None or url.get_backend_name() != "sqlite":
        return None
    try:
        return _locked_file(url)
    except ValueError:
        return None


def _why_read_only(url: URL | None) -> str:
    if url is None:
        return ""
    if str(url.query.get("mode", "")).lower() == "ro":
        return " (database.url opens it with mode=ro)"
    return _why_not_writable(url)


# SQLite's words for a file it cannot open or write, whatever the reason.
_SQLITE_CANNOT_WRITE = re.compile(r"unable to open database file|readonly database")


def _why_not_writable(url: URL) -> str:
    """Where an SQLite file cannot be written, why, as far as can be seen from here: SQLite
    says "unable to open database file" for a read-only mount too (an operator's review)."""
    path = sqlite_file(url) if url.get_backend_name() == "sqlite" else None
    if path is None:
        return ""
    if not path.parent.is_dir():
        return f" (its folder {path.parent} does not exist)"
    problem = cannot_create(path)
    if not problem and path.exists() and not os.access(path, os.W_OK):
        problem = f"this user may not write {path}"
    return f" ({problem})" if problem else ""


def cannot_create(path: Path) -> str:
    """Why `path` and its missing folders cannot be made ("" when they can): the nearest
    existing folder above it is a file, this user may not write in it, or it is on a file
    system that holds no files of its own (/proc, /sys: root may "write" there, by
    os.access, but mkdir fails)."""
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    disk = os.statvfs(existing) if hasattr(os, "statvfs") else None  # not on Windows
    if disk is not None and disk.f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    if disk is not None and disk.f_blocks == 0:  # no room at all: a kernel's virtual one
        return f"nothing can be created in {existing} (a virtual file system of the kernel)"
    return ""


def sqlite_file(url: URL) -> Path | None:
    """The file an SQLite URL points at; None for in-memory databases."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def ensure_sqlite_folder(url: str | URL) -> None:
    """Create the folder of an SQLite file (SQLite creates the file, not its folder); one that
    cannot be made (a read-only mount, a file in the way) is a StorageError naming it."""
    parsed = make_url(url)
    path = sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"cannot make the database folder {path.parent}: {reason}") from None


def _echo_through_logging() -> None:
    """`database.echo`: SQLAlchemy's statements at INFO through the logging module, so they
    meet the root handlers' log-safety filter and format. SQLAlchemy's own `echo=True` adds a
    handler of its own that prints to stdout, past both: every message a user sent was
    printed with its statement's parameters (a helper's walkthrough)."""
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)


def refuse_unusable_sqlite_parameters(url: URL) -> None:
    """Raise ConfigError, one line naming the parameter (never its value), unless SQLite and
    SQLAlchemy's dialect take every parameter of the SQLite URL `url` (bot.settings'
    check_sqlite_parameters). The settings refuse such a URL when they load; this is for one
    that came another way (`alembic -x url=...`, settings changed after they loaded): the
    dialect reads the parameters when the engine is made, where a value it cannot read was a
    ValueError traceback and a name it does not know was dropped unread."""
    from bot.settings import check_sqlite_parameters  # the settings' own check, one copy

    try:
        check_sqlite_parameters(url)
    except ValueError as exc:
        raise ConfigError(f"database.url: {exc}") from None


def _sqlite_engine(url: URL, *, pool_size: int, show_parameters: bool = False) -> AsyncEngine:
    refuse_unusable_sqlite_parameters(url)
    ensure_sqlite_folder(url)
    # A file: a pool of `pool_size` connections (WAL lets them read at once; writers queue in
    # busy_timeout). In memory: the dialect's single shared connection, which takes no size.
    sized = {"pool_size": pool_size, "max_overflow": 0} if sqlite_file(url) is not None else {}
    engine = _engine(url, hide_parameters=not show_parameters, **sized)
    pragmas = sqlite_pragmas(url)

    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        set_sqlite_pragmas(dbapi_connection, pragmas)

    event.listen(engine.sync_engine, "connect", set_pragmas)
    return engine


def sqlite_pragmas(url: URL, pragmas: tuple[str, ...] = SQLITE_PRAGMAS) -> tuple[str, ...]:
    """The pragmas each connection to the SQLite database of `url` gets: `pragmas`, less
    the busy timeout where the URL's `timeout` parameter set it (sqlite3.connect() makes that
    its busy timeout, which the pragma would have replaced without a word)."""
    if "timeout" not in url.query:
        return pragmas
    return tuple(each for each in pragmas if not each.startswith("PRAGMA busy_timeout"))


def set_sqlite_pragmas(dbapi_connection: Any, pragmas: Sequence[str] = SQLITE_PRAGMAS) -> None:
    # Per connection, because busy_timeout, synchronous and foreign_keys are not stored in the
    # file (journal_mode is, but setting it again is harmless).
    cursor = dbapi_connection.cursor()
    try:
        for pragma in pragmas:
            cursor.execute(pragma)
    finally:
        cursor.close()


def describe_error(exc: BaseException, url: str | URL) -> str:
    """A one-line account of a database failure, safe to log and show.

    Only the driver's own error class and first line: SQLAlchemy's text adds the statement and
    its parameters (user content), and the URL is left out (it may hold a password, which is
    masked too, in case a driver echoes it).
    """
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    text = f"database error: {type(cause).__name__}" + (f": {lines[0]}" if lines else "")
    try:
        parsed: URL | None = make_url(url)
    except sa_exc.ArgumentError:  # not a URL at all: nothing to mask
        parsed = None
    known = known_failure(exc, parsed)
    if known:
        return f"database error: {known}"[:300]
    password = parsed.password if parsed is not None else None
    if parsed is not None and lines and _SQLITE_CANNOT_WRITE.search(lines[0]):
        text += _why_not_writable(parsed)
    if password:
        text = text.replace(str(password), "***")
    return text[:300]
