"""Running a store call's statements: one path, SQLAlchemy's AsyncEngine, on every database.

A store call is one synchronous function over `Queries`, run whole on one connection by
`AsyncSession.run_sync` (SQLAlchemy's public bridge: the function runs in one greenlet, so the
call costs one switch, not one per checkout, statement, commit and close). Statements are
Core constructs built once at import; SQLAlchemy caches their compiled form per dialect, and
asyncpg prepares and caches them per connection. Failures are SQLAlchemy's own
(`DBAPIError`, with `connection_invalidated` set when the server dropped the connection,
which the pool then replaces; `TimeoutError` past the pool's timeout).

Calls wait for a connection in `Admission`, in front of the pool, not in the pool's own
queue: a call that decides what a user sees next (an answer's first piece waits for
`begin_delivery`) goes before the calls of turns that have not reached their model yet, and
on SQLite one write runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

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

    def many(self, statement: sa.Executable, params: Sequence[Mapping[str, Any]]) -> None:
        """Run `statement` once for each of `params` (the driver's executemany)."""
        ...


class SaQueries:
    """`Queries` over a SQLAlchemy connection."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def rows(self, statement: sa.Executable, params: Params = None) -> Sequence[Sequence[Any]]:
        result = self._conn.execute(statement, params)
        return result.all() if result.returns_rows else []

    def rowcount(self, statement: sa.Executable, params: Params = None) -> int:
        return self._conn.execute(statement, params).rowcount

    def many(self, statement: sa.Executable, params: Sequence[Mapping[str, Any]]) -> None:
        self._conn.execute(statement, list(params))


class Runner:
    """Store calls over `engine`: a write in a transaction (BEGIN ... COMMIT, rolled back on
    any failure), a read on a connection without one where the server allows it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sync_engine = engine.sync_engine
        self._admission = admission(engine)
        # PostgreSQL: reads (and single-statement writes) in autocommit mode, with no BEGIN and
        # ROLLBACK round trips around them. SQLite's driver opens no transaction for a read.
        self._autocommit: dict[str, Any] = {}
        if engine.dialect.name == "postgresql":
            self._autocommit = {"isolation_level": "AUTOCOMMIT"}

    async def run(
        self,
        work: Callable[[Queries], T],
        *,
        transaction: bool,
        write: bool,
        urgent: bool = False,
    ) -> T:
        """`work` on one connection; in a transaction committed on success if `transaction`.
        `write`: it changes rows (on SQLite it waits for the one writer's place). `urgent`:
        a user waits on it to see the answer go on; it is admitted before the others.

        The checkout, BEGIN, the statements, COMMIT and the return to the pool all run in one
        `AsyncSession.run_sync` (SQLAlchemy's public bridge to its synchronous API): one
        greenlet switch per call. `async with engine.connect()` costs three, and a task."""
        options = None if transaction else self._autocommit
        async with self._admission.place(write=write, urgent=urgent):
            return await AsyncSession(self._engine).run_sync(
                _call, self._sync_engine, work, transaction, options
            )

    async def warm(self, connections: int) -> None:
        """Open `connections` pooled connections now, so that the first turns do not pay
        for connecting (TCP, TLS, authentication, pragmas)."""
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(connections):
                await stack.enter_async_context(self._engine.connect())


def admission(engine: AsyncEngine) -> Admission:
    """The one Admission of `engine`, shared by the store's calls and the repositories'
    (database.run_on_connection), so that a call waits for its place once, in one line.

    SQLite has one writer at a time: a second write waits for the first here, woken the
    moment it commits, not in SQLite's busy handler, which sleeps and polls (1, 2, 5, 10 ms
    and more) while holding a pooled connection. Another engine on the same file (the lease
    keeper's own connection, another process) still meets these writes in the busy handler."""
    found = _ADMISSIONS.get(engine)
    if found is None:
        pool = engine.pool
        found = _ADMISSIONS[engine] = Admission(
            None if isinstance(pool, NullPool) else pool_size(engine),
            writers=1 if engine.dialect.name == "sqlite" else None,
            timeout_s=pool.timeout() if isinstance(pool, QueuePool) else None,
        )
    return found


class Admission:
    """Places on a pool's connections: at most `places` calls at once (None: any number), at
    most `writers` of them writes (None: any number). A call that finds no place waits in
    line, urgent ones first, then in the order they came; one waiting longer than `timeout_s`
    fails as the pool's own checkout does (SQLAlchemy's TimeoutError). A write that cannot run
    yet does not hold back a read behind it that can. Code that opens the engine's connections
    itself (engine.connect()) is not in this line: its connections are the pool's, and a call
    admitted here may still wait for one of them in the pool's own queue."""

    def __init__(self, places: int | None, *, writers: int | None, timeout_s: float | None) -> None:
        self._free: float = places if places is not None else float("inf")
        self._writers_free = writers
        self._timeout_s = timeout_s
        self._line: list[tuple[bool, int, bool, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def place(self, *, write: bool, urgent: bool) -> AsyncIterator[None]:
        # After each give-back nobody in line fits: a call that fits now overtakes no one.
        if self._fits(write):
            self._take(write)
        else:
            await self._wait(write, urgent)
        try:
            yield
        finally:
            self._give_back(write)

    def _fits(self, write: bool) -> bool:
        return self._free > 0 and not (write and self._writers_free == 0)

    def _take(self, write: bool) -> None:
        self._free -= 1
        if write and self._writers_free is not None:
            self._writers_free -= 1

    async def _wait(self, write: bool, urgent: bool) -> None:
        admitted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._line, (not urgent, next(self._order), write, admitted))
        try:
            async with asyncio.timeout(self._timeout_s):
                await admitted
        except TimeoutError:
            if admitted.done() and not admitted.cancelled():
                return  # admitted as the timeout struck: the place is taken, use it
            # This call and those still in line; the ones that gave up stay in the heap until
            # a give-back pops them, and are not waiting.
            waiting = 1 + sum(not entry[3].done() for entry in self._line)
            raise sa_exc.TimeoutError(
                f"no database connection free within {self._timeout_s:g} s "
                f"({waiting} calls waiting)"
            ) from None
        except BaseException:
            if admitted.done() and not admitted.cancelled():
                self._give_back(write)  # admitted, then cancelled before it ran
            raise

    def _give_back(self, write: bool) -> None:
        self._free += 1
        if write and self._writers_free is not None:
            self._writers_free += 1
        held_back = []
        while self._line and self._free > 0:
            entry = heapq.heappop(self._line)
            admitted, its_write = entry[3], entry[2]
            if admitted.done():  # gave up waiting (cancelled, timed out)
                continue
            if self._fits(its_write):
                self._take(its_write)
                admitted.set_result(None)
            else:
                held_back.append(entry)
        for entry in held_back:
            heapq.heappush(self._line, entry)


_ADMISSIONS: weakref.WeakKeyDictionary[AsyncEngine, Admission] = weakref.WeakKeyDictionary()


def _call(
    _session: Session,
    engine: sa.Engine,
    work: Callable[[Queries], T],
    transaction: bool,
    options: dict[str, Any] | None,
) -> T:
    # The engine's own connection, not the session's: the session is only the bridge into
    # the greenlet. Its transaction bookkeeping (a SessionTransaction, an identity-map
    # snapshot, the close) cost about 50 us of CPU a call and did nothing here.
    with engine.connect() as conn:  # closing rolls back what was not committed
        if options:
            conn.execution_options(**options)
        result = work(SaQueries(conn))
        if transaction:
            conn.commit()
        return result


def pool_size(engine: AsyncEngine) -> int:
    """How many connections the engine's pool keeps open (an in-memory SQLite database has
    one connection, in a StaticPool)."""
    pool = engine.pool
    return pool.size() if isinstance(pool, QueuePool) else 1
