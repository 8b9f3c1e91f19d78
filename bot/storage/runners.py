"""Running a store call's statements: one path, SQLAlchemy's AsyncEngine, on every database.

A store call is one synchronous function over `Queries`, run whole on one connection by
`AsyncSession.run_sync` (SQLAlchemy's public bridge: the function runs in one greenlet, so the
call costs one switch, not one per checkout, statement, commit and close). Statements are
Core constructs built once at import; SQLAlchemy caches their compiled form per dialect, and
asyncpg prepares and caches them per connection. Failures are SQLAlchemy's own
(`DBAPIError`, with `connection_invalidated` set when the server dropped the connection,
which the pool then replaces).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

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
        # PostgreSQL: reads (and single-statement writes) in autocommit mode, with no BEGIN and
        # ROLLBACK round trips around them. SQLite's driver opens no transaction for a read.
        self._autocommit: dict[str, Any] = {}
        if engine.dialect.name == "postgresql":
            self._autocommit = {"isolation_level": "AUTOCOMMIT"}

    async def run(self, work: Callable[[Queries], T], *, transaction: bool) -> T:
        """`work` on one connection; in a transaction committed on success if `transaction`.

        The checkout, BEGIN, the statements, COMMIT and the return to the pool all run in one
        `AsyncSession.run_sync` (SQLAlchemy's public bridge to its synchronous API): one
        greenlet switch per call. `async with engine.connect()` costs three, and a task."""
        options = None if transaction else self._autocommit
        return await AsyncSession(self._engine).run_sync(_call, work, transaction, options)

    async def warm(self, connections: int) -> None:
        """Open `connections` pooled connections now, so that the first turns do not pay
        for connecting (TCP, TLS, authentication, pragmas)."""
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(connections):
                await stack.enter_async_context(self._engine.connect())


def _call(
    session: Session,
    work: Callable[[Queries], T],
    transaction: bool,
    options: dict[str, Any] | None,
) -> T:
    try:
        conn = session.connection(execution_options=options)
        result = work(SaQueries(conn))
        if transaction:
            session.commit()
        return result
    finally:
        session.close()  # rolls back what was not committed; the connection goes back


def pool_size(engine: AsyncEngine) -> int:
    """How many connections the engine's pool keeps open (an in-memory SQLite database has
    one connection, in a StaticPool)."""
    pool = engine.pool
    return pool.size() if isinstance(pool, QueuePool) else 1
