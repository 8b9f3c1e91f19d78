"""Running a store call's statements: the hot path of every turn.

`SqlStore` runs each call's statements through `Queries`, by the runner for its database:
on an SQLite file `SqliteThread` (the whole call in one trip to a thread that owns a stdlib
sqlite3 connection), on PostgreSQL `AsyncpgRunner` (asyncpg itself, in one greenlet, on the
engine's pooled connections), else `SaRunner` (SQLAlchemy's own execution). Other modules
(preferences, knowledge base, migrations) use the AsyncEngine as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import await_only, greenlet_spawn

from bot.storage.database import set_sqlite_pragmas, sqlite_file

# --- running a store call's statements ------------------------------------------------------
#
# A store call is one synchronous function over `Queries`, run whole by one `Runner` in one
# hand-off. On an SQLite file and on asyncpg, its statements are compiled by SQLAlchemy once
# (`_Prepared`) and sent with the driver itself: SQLAlchemy's execution machinery (execution
# context, result objects, the adapters' greenlet bridges) costs more CPU than these statements.

T = TypeVar("T")
Params = Mapping[str, Any] | None


class Queries(Protocol):
    """The statements of one store call, on one connection (in one transaction if the call
    is one). Rows are positional."""

    def rows(self, statement: sa.Executable, params: Params = None) -> Sequence[Sequence[Any]]:
        """The rows `statement` returns ([] for one that returns none)."""
        ...

    def rowcount(self, statement: sa.Executable, params: Params = None) -> int:
        """Run `statement`; the number of rows it changed."""
        ...


class Runner(Protocol):
    async def run(self, work: Callable[[Queries], T], *, transaction: bool) -> T:
        """`work` on one connection; in a transaction committed on success if `transaction`,
        else each statement on its own (a read). Failures are SQLAlchemy's DBAPIError (with
        connection_invalidated set when the connection died) or the driver's connect errors."""
        ...

    async def aclose(self) -> None: ...


def runner_for(engine: AsyncEngine) -> Runner:
    """The fastest runner for `engine`'s database; SQLAlchemy's own where echo is on, so that
    statements are logged."""
    return SqliteThread.beside(engine) or AsyncpgRunner.beside(engine) or SaRunner(engine)


class _Prepared:
    """A statement compiled once: its SQL, how its positional parameters are built from named
    ones (with SQLAlchemy's conversions, e.g. datetime to text on SQLite), and the conversions
    of its result columns (SQLite hands back DATETIME as text)."""

    def __init__(self, statement: sa.ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler):  # DDL is not run this way
            raise TypeError(f"not a statement: {statement!r}")
        self.sql = compiled.string
        # (name, required, default, conversion, expanding) per parameter, in order.
        self._binds: list[tuple[str, bool, Any, Any, bool]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            if bind.expanding and dialect.paramstyle != "qmark":  # "$n" would need renumbering
                raise NotImplementedError(f"IN lists on {dialect.name}: use = ANY(array)")
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self._binds.append((name, bind.required, bind.effective_value, process, bind.expanding))
        # Most statements: every parameter given by name, none a list.
        plain = [(b[0], b[3]) for b in self._binds if b[1] and not b[4]]
        self._plain = plain if len(plain) == len(self._binds) else None
        columns = statement.exported_columns if isinstance(statement, sa.ReturnsRows) else ()
        self._results = [
            (i, process)
            for i, column in enumerate(columns)
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
        ]

    def arguments(self, params: Params) -> tuple[str, list[Any]]:
        """The SQL (IN lists expanded) and its positional parameters."""
        given = params or {}
        if self._plain is not None:
            args = [process(given[n]) if process else given[n] for n, process in self._plain]
            return self.sql, args
        sql, args = self.sql, []
        for name, required, default, process, expanding in self._binds:
            value = given[name] if required else given.get(name, default)
            if not expanding:
                args.append(process(value) if process else value)
                continue
            values = [process(v) if process else v for v in value]
            marks = ", ".join("?" * len(values)) or "SELECT 1 FROM (SELECT 1) WHERE 1!=1"
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks, 1)
            args.extend(values)
        return sql, args

    def converted(self, rows: list[Any]) -> Sequence[Sequence[Any]]:
        if not self._results:
            return rows
        out = []
        for row in rows:
            values = list(row)
            for i, process in self._results:
                values[i] = process(values[i])
            out.append(values)
        return out


class _Statements:
    """Statements compiled on first use, for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._prepared: dict[Any, _Prepared] = {}

    def __call__(self, statement: Any) -> _Prepared:
        prepared = self._prepared.get(statement)
        if prepared is None:  # a race compiles twice, harmlessly
            prepared = self._prepared[statement] = _Prepared(statement, self._dialect)
        return prepared


# --- SQLAlchemy's own path: in-memory SQLite, and echo on ---------------------------------


class SaQueries:
    """`Queries` over a SQLAlchemy connection."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def rows(self, statement: sa.Executable, params: Params = None) -> Sequence[Sequence[Any]]:
        result = self._conn.execute(statement, params)
        return result.all() if result.returns_rows else []

    def rowcount(self, statement: sa.Executable, params: Params = None) -> int:
        return self._conn.execute(statement, params).rowcount


class SaRunner:
    """A call's work in one greenlet over the AsyncEngine, as `AsyncConnection.run_sync`
    does: one switch into SQLAlchemy per call, not one per checkout, statement and commit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.sync_engine
        # Reads in autocommit mode where the server would otherwise get BEGIN and ROLLBACK.
        self._reader = self._engine
        if engine.dialect.name == "postgresql":
            self._reader = engine.execution_options(isolation_level="AUTOCOMMIT").sync_engine

    async def run(self, work: Callable[[Queries], T], *, transaction: bool) -> T:
        return await greenlet_spawn(self._call, work, transaction)

    def _call(self, work: Callable[[Queries], T], transaction: bool) -> T:
        if transaction:
            with self._engine.begin() as conn:
                return work(SaQueries(conn))
        with self._reader.connect() as conn:
            return work(SaQueries(conn))

    async def aclose(self) -> None:
        return None


# --- PostgreSQL: asyncpg itself, on the engine's pooled connections -----------------------


class _AsyncpgQueries:
    """`Queries` over an asyncpg connection, from inside a greenlet."""

    def __init__(self, runner: AsyncpgRunner, conn: Any) -> None:
        self._runner = runner
        self._conn = conn

    def rows(self, statement: sa.Executable, params: Params = None) -> Sequence[Sequence[Any]]:
        sql, args = self._runner.statements(statement).arguments(params)
        rows: list[Any] = self._runner.sent(self._conn.fetch(sql, *args), sql, args)
        return rows

    def rowcount(self, statement: sa.Executable, params: Params = None) -> int:
        sql, args = self._runner.statements(statement).arguments(params)
        status: str = self._runner.sent(self._conn.execute(sql, *args), sql, args)
        return int(status.rpartition(" ")[2] or 0)  # "UPDATE 3", "INSERT 0 1"


class AsyncpgRunner:
    """Store calls on PostgreSQL over asyncpg directly, on connections checked out of the
    AsyncEngine's pool (recycling, size and disposal stay the engine's). Statements are
    prepared and cached by asyncpg per connection, as SQLAlchemy's adapter does. BEGIN and
    COMMIT only around a call that is a transaction; a connection that died (the server
    restarted) is invalidated and reported as such, so the store can retry once."""

    def __init__(self, engine: AsyncEngine) -> None:
        import asyncpg  # present whenever an asyncpg URL works at all

        self._pool_engine = engine.sync_engine
        self.statements = _Statements(engine.dialect)
        self._integrity: type[BaseException] = asyncpg.IntegrityConstraintViolationError
        # Errors that leave the connection unusable: it was closed or reset by the server
        # (connection exceptions, administrator or crash shutdown), or its protocol is stuck
        # (an operation interrupted, as by a termination notice that came while it was idle).
        self._lost: tuple[type[BaseException], ...] = (
            asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError,
            asyncpg.InternalClientError, OSError,
        )  # fmt: skip

    @classmethod
    def beside(cls, engine: AsyncEngine) -> AsyncpgRunner | None:
        if engine.url.get_driver_name() != "asyncpg" or engine.echo:
            return None
        return cls(engine)

    async def run(self, work: Callable[[Queries], T], *, transaction: bool) -> T:
        return await greenlet_spawn(self._call, work, transaction)

    def _call(self, work: Callable[[Queries], T], transaction: bool) -> T:
        pooled = self._pool_engine.raw_connection()
        conn = self._driver(pooled)
        try:
            if transaction:
                self.sent(conn.execute("BEGIN"), "BEGIN", ())
            result = work(_AsyncpgQueries(self, conn))
            if transaction:
                self.sent(conn.execute("COMMIT"), "COMMIT", ())
            return result
        except sa_exc.DBAPIError as exc:
            if conn.is_closed() or isinstance(exc.orig, self._lost):
                # The server went away, and so did every pooled connection.
                exc.connection_invalidated = True
                self._pool_engine.pool._invalidate(pooled, exc)  # as SQLAlchemy does
            elif conn.is_in_transaction():
                self._roll_back(pooled, conn)
            raise
        except BaseException as exc:  # our own exception in `work`, or a cancellation
            if conn.is_closed() or not isinstance(exc, Exception):
                pooled.invalidate()  # cancelled mid-statement: its state is unknown
            elif conn.is_in_transaction():
                self._roll_back(pooled, conn)
            raise
        finally:
            pooled.close()

    @staticmethod
    def _driver(pooled: Any) -> Any:
        """The asyncpg connection of a pooled one."""
        return pooled.driver_connection

    def sent(self, awaitable: Awaitable[T], sql: str, args: Any) -> T:
        """Await a driver call from the greenlet; its errors as SQLAlchemy's wrappers."""
        try:
            return await_only(awaitable)
        except Exception as exc:  # only the driver runs here
            wrapper = (
                sa_exc.IntegrityError if isinstance(exc, self._integrity) else sa_exc.DBAPIError
            )
            raise wrapper(sql, args, exc) from exc

    def _roll_back(self, pooled: Any, conn: Any) -> None:
        try:
            await_only(conn.execute("ROLLBACK"))
        except Exception:
            pooled.invalidate()  # a connection we cannot roll back goes

    async def aclose(self) -> None:
        return None


# --- SQLite file: one thread, one sqlite3 connection --------------------------------------


class _SqliteQueries:
    """`Queries` over a sqlite3 connection; driver errors raised as SQLAlchemy's wrappers, as
    the engine raises them (IntegrityError, OperationalError, ...)."""

    def __init__(self, conn: sqlite3.Connection, statements: _Statements) -> None:
        self._conn = conn
        self._statements = statements

    def rows(self, statement: sa.Executable, params: Params = None) -> Sequence[Sequence[Any]]:
        prepared = self._statements(statement)
        rows, _ = self._run(*prepared.arguments(params))
        return prepared.converted(rows)

    def rowcount(self, statement: sa.Executable, params: Params = None) -> int:
        return self._run(*self._statements(statement).arguments(params))[1]

    def _run(self, sql: str, args: list[Any]) -> tuple[list[Any], int]:
        try:
            cursor = self._conn.execute(sql, args)
            try:
                return cursor.fetchall(), cursor.rowcount
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise _wrapped(exc, sql, args) from exc


def _wrapped(exc: sqlite3.Error, sql: str | None = None, args: Any = None) -> BaseException:
    return sa_exc.DBAPIError.instance(sql, args, exc, sqlite3.Error)


_Call = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class _Worker:
    """One thread and its own sqlite3 connection, opened on first use: calls run in order."""

    def __init__(self, name: str, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._stale = False  # close the connection after the call that holds it
        self._busy = threading.Lock()  # held while a call uses the connection
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        # Daemon, as SQLAlchemy makes aiosqlite's: a store never closed cannot hang the exit.
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, future, loop))
        return await future

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future, loop = call
            if future.cancelled():  # cancelled before it started: it never runs
                continue
            with self._busy:
                try:
                    outcome: tuple[Any, BaseException | None] = (fn(self._connection()), None)
                except BaseException as exc:  # handed to the caller, whatever it is
                    outcome = (None, exc)
                if self._stale:
                    self._close()
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, *outcome)
        with self._busy:
            self._close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _close(self) -> None:
        conn, self._conn, self._stale = self._conn, None, False
        if conn is not None:
            conn.close()

    def reset(self) -> None:
        """Close the connection now if idle, else once its call is done; the next call opens
        a new one (as a disposed pool closes its connections)."""
        if self._busy.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._busy.release()
        else:
            self._stale = True

    async def aclose(self) -> None:
        self._calls.put(None)
        await asyncio.to_thread(self._thread.join)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class SqliteThread:
    """Store calls on an SQLite file, each in one trip to a thread.

    Through the AsyncEngine every statement, commit and checkout is a greenlet switch and a
    hand-off to aiosqlite's thread and back. Here a call's whole `work` runs in a thread that
    owns a sqlite3 connection (same file, pragmas and implicit transactions as the engine's).

    One thread, calls in the order they were made: a read sees every write this process made
    before it (a pending read never overtakes the insert it follows), and this process's
    writers queue here rather than in SQLite's busy handler, which sleeps. SQLite runs one
    writer at a time anyway. Disposing of the AsyncEngine closes the connection too.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], dialect: Dialect) -> None:
        self._statements = _Statements(dialect)  # used in the worker's thread only
        self._worker = _Worker("parley-sqlite", connect)

    @classmethod
    def beside(cls, engine: AsyncEngine) -> SqliteThread | None:
        url = engine.url
        if url.get_backend_name() != "sqlite" or sqlite_file(url) is None or engine.echo:
            return None  # in-memory: a second connection would see another database
        cargs, cparams = engine.dialect.create_connect_args(url)
        thread = cls(partial(_connect_sqlite, cargs, cparams), engine.dialect)
        event.listen(engine.sync_engine, "engine_disposed", lambda _engine: thread.reset())
        return thread

    async def run(self, work: Callable[[Queries], T], *, transaction: bool) -> T:
        """A call cancelled before the thread takes it never runs; one already running
        finishes (commits or rolls back)."""
        return await self._worker.run(partial(self._call, work, transaction))

    def _call(self, work: Callable[[Queries], T], commit: bool, conn: sqlite3.Connection) -> T:
        try:
            result = work(_SqliteQueries(conn, self._statements))
            if conn.in_transaction and commit:
                conn.commit()
            elif conn.in_transaction:
                conn.rollback()
            return result
        except sqlite3.Error as exc:
            _roll_back(conn)
            raise _wrapped(exc) from exc
        except BaseException:
            _roll_back(conn)
            raise

    def reset(self) -> None:
        """Close the connection (now if idle, else after the running call): the next call
        opens a new one."""
        self._worker.reset()

    async def aclose(self) -> None:
        await self._worker.aclose()


def _roll_back(conn: sqlite3.Connection) -> None:
    # A failed rollback: the transaction went with the failure that brought us here.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()


def _connect_sqlite(cargs: Sequence[Any], cparams: Mapping[str, Any]) -> sqlite3.Connection:
    try:
        conn: sqlite3.Connection = sqlite3.connect(
            *cargs, **{**cparams, "check_same_thread": False}
        )
    except sqlite3.Error as exc:
        raise _wrapped(exc) from exc
    try:
        set_sqlite_pragmas(conn, None)
    except sqlite3.Error as exc:
        conn.close()
        raise _wrapped(exc) from exc
    return conn
