"""Core overhead of one Parley turn, set against the raw cost of the same database and Redis calls.

    .venv/bin/python -m bench.core_overhead            # both setups, about 1-2 minutes
    .venv/bin/python -m bench.core_overhead --quick    # smaller counts, a smoke run
    .venv/bin/python -m bench.core_overhead --only embedded

Two setups run in one process, one after the other: the embedded defaults (SQLite file in WAL
mode + the in-process MemoryCache) and the production pair (PostgreSQL + Redis). For each:

1. turn overhead: `await app.manager.handle(incoming)` per message, sequential, with a backend
   that answers at once (one chunk + usage, no sleeps), so what is timed is the framework and
   its storage round trips, not a model;
2. throughput: many conversations driven concurrently, each turn after the previous one;
3. raw: the SQL statements (with their parameters and transaction boundaries) and Redis
   commands and pipelines that real turns sent, captured where they leave the process (the
   store's driver connections, SQLAlchemy engine events for the other modules, wrappers
   around the Redis client's `execute_command` and `pipeline`), replayed per turn with the
   bare drivers, each the fastest reasonable way, paced as the turn sent them (before each
   call the loop's thread stays busy, untimed, as long as the turn worked before it: see
   `replay`), and the ratio turn p50 / raw p50 (also against the calls back to back):
   - PostgreSQL: asyncpg, BEGIN/COMMIT only around what was a transaction (autocommit
     statements alone), + redis.asyncio (a pipeline as one pipeline);
   - SQLite: sqlite3 in a thread of its own, one hop per transaction (an async program must
     leave its loop for a blocking driver, once per transaction at least). For reference,
     also aiosqlite (one hop per statement) and sqlite3 on the loop itself (no hop: the floor,
     which blocks the loop);
4. context load: `ContextLoader.load` for conversations with 10, 1,000 and 100,000 earlier
   messages (bulk-inserted in the store's shape), cold (cache entry deleted: rebuilt from SQL)
   and warm (cached); the target pair has answers of ~300 tokens, so that both windows hold
   the same turns and only the history differs (see `load_cases`).

A benchmark reports; it never fails: the exit status is 0 whatever the figures. Services that
do not answer are reported as skipped. PostgreSQL and Redis addresses come from
PARLEY_BENCH_POSTGRES_URL (an admin URL: the bench creates and drops its own database) and
PARLEY_BENCH_REDIS_URL (keys go under a unique prefix, deleted at the end; never FLUSHDB).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import queue
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import event

from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bot.app import Parley
from bot.settings import Settings
from bot.storage.database import SQLITE_PRAGMAS
from bot.storage.runners import AsyncpgRunner, SqliteThread
from bot.types import ConversationKey, Incoming, User

PLATFORM = "bench"
REPLY = "Sure, here is a short and instant answer."
# Idempotency keys start with this, so the replay can find the parameter and make it unique.
IDEM_MARK = "pbidem-"
OVERHEAD_TARGET = 2.0
CONTEXT_TARGET = 1.2

DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# --- the two seams: an instant backend and a sink that only counts --------------------------


class InstantBackend:
    """A Backend that answers every request at once: one text chunk, then usage."""

    def __init__(self, max_model_len: int = 32768) -> None:
        self._caps = Capabilities("instant", "instant", max_model_len, exact_token_counts=False)
        self._reply_tokens = estimate_tokens(REPLY)

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        yield Chunk(text=REPLY)
        yield Chunk(usage=Usage(0, self._reply_tokens), finish_reason="stop")

    async def aclose(self) -> None:
        return None


class CountingSink:
    def __init__(self) -> None:
        self.replies = 0

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        async for _ in chunks:
            pass
        self.replies += 1


# --- figures ---------------------------------------------------------------------------------


def pct(values_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    ordered = sorted(values_ns)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[rank] / 1e6


@dataclass
class SetupResult:
    name: str
    label: str
    skipped: str = ""
    turn_ns: list[int] = field(default_factory=list)
    raw_ns: list[int] = field(default_factory=list)  # paced as in the turns (see replay)
    raw_b2b_ns: list[int] = field(default_factory=list)  # the same, back to back
    # Other ways to send the same calls, for reference (SQLite: aiosqlite, sync sqlite3).
    raw_others: dict[str, list[int]] = field(default_factory=dict)
    raw_label: str = ""
    hops: dict[int, float] = field(default_factory=dict)  # see hop_costs
    per_turn: dict[str, float] = field(default_factory=dict)
    throughput: float = 0.0
    throughput_turns: int = 0
    throughput_replies: int = 0
    cold: dict[str, list[int]] = field(default_factory=dict)
    warm: dict[str, list[int]] = field(default_factory=dict)
    turns_in_window: dict[str, int] = field(default_factory=dict)
    # (larger, smaller) cases: the target pair (answers: windows of the same size), the
    # one-line pair (windows of different sizes), and the largest against the middle size.
    context_pair: Pair | None = None
    lines_pair: Pair | None = None
    history_pair: Pair | None = None
    seconds: float = 0.0

    @property
    def overhead_ratio(self) -> float | None:
        if not self.turn_ns or not self.raw_ns:
            return None
        return pct(self.turn_ns, 0.5) / pct(self.raw_ns, 0.5)

    @property
    def context_ratio(self) -> float | None:
        return self.cold_ratio(self.context_pair)

    def cold_ratio(self, pair: Pair | None) -> float | None:
        if pair is None:
            return None
        big, small = (self.cold[case.label] for case in pair)
        return pct(big, 0.5) / pct(small, 0.5)


# --- traffic ---------------------------------------------------------------------------------


class Traffic:
    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]
        self._seq = 0

    def incoming(self, group: str, conv: int, turn: int) -> Incoming:
        self._seq += 1
        return Incoming(
            key=ConversationKey(PLATFORM, f"{group}-{conv}"),
            user=User(PLATFORM, f"{group}-u{conv}", f"Bench user {conv}"),
            text=f"Message {turn} in conversation {conv}: what did we agree on last time?",
            idempotency_key=f"{IDEM_MARK}{self.run}-{self._seq}",
        )


async def sequential(
    app: Parley,
    traffic: Traffic,
    group: str,
    convs: int,
    turns: int | range,
    on_turn: Callable[[], None] | None = None,
    after_turn: Callable[[int, Any], None] | None = None,
) -> list[int]:
    """Turns one after the other, round robin over the conversations; the time of each."""
    times = []
    handle = app.manager.handle
    for turn in turns if isinstance(turns, range) else range(turns):
        for conv in range(convs):
            incoming = traffic.incoming(group, conv, turn)
            if on_turn is not None:
                on_turn()
            t0 = time.perf_counter_ns()
            recorded = await handle(incoming)
            times.append(time.perf_counter_ns() - t0)
            if after_turn is not None:
                after_turn(turn, recorded)
    return times


async def concurrent(app: Parley, traffic: Traffic, group: str, convs: int, turns: int) -> float:
    """Every conversation at once, each turn after the previous one; seconds in all."""

    async def one(conv: int) -> None:
        for turn in range(turns):
            await app.manager.handle(traffic.incoming(group, conv, turn))

    t0 = time.perf_counter_ns()
    await asyncio.gather(*(one(c) for c in range(convs)))
    await app.manager.wait_idle()
    return (time.perf_counter_ns() - t0) / 1e9


# --- capture ---------------------------------------------------------------------------------

Event = tuple[Any, ...]


class RecordingSqlite:
    """A sqlite3 connection that records what is sent through it."""

    def __init__(self, conn: sqlite3.Connection, add: Callable[[Event], None]) -> None:
        self._conn = conn
        self._add = add

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        self._add(("sql", sql, tuple(args)))
        return self._conn.execute(sql, args)

    def commit(self) -> None:
        self._add(("commit",))
        self._conn.commit()

    def rollback(self) -> None:
        self._add(("rollback",))
        self._conn.rollback()

    def close(self) -> None:
        self._conn.close()


class RecordingAsyncpg:
    """An asyncpg connection that records what the store's runner sends through it."""

    def __init__(self, conn: Any, add: Callable[[Event], None]) -> None:
        self._conn = conn
        self._add = add

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    def is_in_transaction(self) -> bool:
        return bool(self._conn.is_in_transaction())

    def _record(self, sql: str, args: tuple[Any, ...]) -> None:
        ends = {"BEGIN": ("begin", False), "COMMIT": ("commit",), "ROLLBACK": ("rollback",)}
        self._add(ends.get(sql) or ("sql", sql, args))

    async def fetch(self, sql: str, *args: Any) -> Any:
        self._record(sql, args)
        return await self._conn.fetch(sql, *args)

    async def execute(self, sql: str, *args: Any) -> Any:
        self._record(sql, args)
        return await self._conn.execute(sql, *args)


class Capture:
    """Records what the turns send: SQL (+ transaction boundaries, and whether the connection
    was in autocommit mode, where no BEGIN goes to the server), pool pings, Redis commands and
    pipelines (a pipeline bypasses the client's `execute_command`: one round trip for all).

    SQL is seen where it leaves: SQLAlchemy's engine events for the AsyncEngine (preferences,
    knowledge base), and the driver connections of the store's runner: the sqlite3 connection
    of its thread on an SQLite file (each store call one transaction), the asyncpg connections
    on PostgreSQL (BEGIN/COMMIT as sent; a statement outside them commits by itself).
    Listeners are installed only for the capture pass, never while turns are being timed.
    """

    def __init__(self, app: Parley) -> None:
        self.turns: list[list[Event]] = []
        self.current: list[Event] | None = None
        self._engines = [app.store._engine.sync_engine]
        self._runner = getattr(app.store, "_runner", None)
        self._client = getattr(app.manager._cache, "_client", None)  # RedisCache's client
        self.redis_prefix = getattr(app.manager._cache, "_prefix", "")

    def new_turn(self) -> None:
        self.current = [("end", time.perf_counter_ns())]  # the loop is free from here
        self.turns.append(self.current)

    def _mark(self, kind: str) -> None:
        """A round trip leaves ("start") or comes back ("end"), seen from the event loop: the
        time between one's end and the next one's start is the turn's own work."""
        self._add((kind, time.perf_counter_ns()))

    def _add(self, ev: Event) -> None:
        if self.current is not None:
            self.current.append(ev)

    def _sql(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        params = tuple(parameters) if isinstance(parameters, list | tuple) else parameters
        self._add(("sql", statement, params))

    def _begin(self, conn: Any) -> None:
        level = conn.get_execution_options().get("isolation_level")
        self._mark("start")
        self._add(("begin", level == "AUTOCOMMIT"))

    def _commit(self, conn: Any) -> None:
        self._add(("commit",))
        self._mark("end")

    def _rollback(self, conn: Any) -> None:
        self._add(("rollback",))
        self._mark("end")

    def _listeners(self) -> list[tuple[str, Callable[..., None]]]:
        return [
            ("before_cursor_execute", self._sql),
            ("begin", self._begin),
            ("commit", self._commit),
            ("rollback", self._rollback),
        ]

    def install(self) -> None:
        for engine in self._engines:
            for name, fn in self._listeners():
                event.listen(engine, name, fn)
            self._count_pings(engine.dialect)
        if isinstance(self._runner, SqliteThread):
            self._record_thread(self._runner)
        elif isinstance(self._runner, AsyncpgRunner):
            self._runner._driver = lambda pooled: RecordingAsyncpg(
                pooled.driver_connection, self._add
            )
        if self._runner is not None:
            self._time_runner(self._runner)
        if self._client is not None:
            self._record_redis(self._client)

    def _record_thread(self, threads: Any) -> None:
        original_call = threads._call

        def call(work: Any, commit: bool, conn: Any) -> Any:
            self._add(("begin", False))  # one store call, one transaction
            return original_call(work, commit, conn)

        threads._call = call
        worker = threads._worker
        self._connect = worker._connect
        worker._connect = lambda: RecordingSqlite(self._connect(), self._add)
        worker.reset()  # the next call opens a recorded connection

    def _time_runner(self, runner: Any) -> None:
        original_run = runner.run

        async def run(work: Any, *, transaction: bool) -> Any:
            self._mark("start")
            try:
                return await original_run(work, transaction=transaction)
            finally:
                self._mark("end")

        runner.run = run

    def _unrecord_thread(self, threads: Any) -> None:
        del threads._call
        threads._worker._connect = self._connect
        threads._worker.reset()

    def _count_pings(self, dialect: Any) -> None:
        original_ping = dialect.do_ping

        def counting_ping(dbapi_connection: Any) -> bool:
            self._add(("ping",))
            return bool(original_ping(dbapi_connection))

        dialect.do_ping = counting_ping

    def _record_redis(self, client: Any) -> None:
        original = client.execute_command
        original_pipeline = client.pipeline

        async def recording(*args: Any, **options: Any) -> Any:
            self._mark("start")
            self._add(("redis", args, options))
            try:
                return await original(*args, **options)
            finally:
                self._mark("end")

        def recording_pipeline(transaction: bool = True, shard_hint: Any = None) -> Any:
            pipe = original_pipeline(transaction, shard_hint)
            original_execute = pipe.execute

            async def execute(raise_on_error: bool = True) -> Any:
                self._mark("start")
                self._add(("pipeline", transaction, tuple(pipe.command_stack)))
                try:
                    return await original_execute(raise_on_error)
                finally:
                    self._mark("end")

            pipe.execute = execute
            return pipe

        client.execute_command = recording
        client.pipeline = recording_pipeline

    def remove(self) -> None:
        self.current = None
        for engine in self._engines:
            for name, fn in self._listeners():
                event.remove(engine, name, fn)
            del engine.dialect.do_ping
        if isinstance(self._runner, SqliteThread):
            self._unrecord_thread(self._runner)
        elif isinstance(self._runner, AsyncpgRunner):
            del self._runner._driver
        if self._runner is not None:
            del self._runner.run
        if self._client is not None:
            del self._client.execute_command
            del self._client.pipeline

    def counts(self) -> dict[str, float]:
        n = max(1, len(self.turns))
        out: dict[str, float] = {}
        for kind in ("sql", "commit", "rollback", "ping", "redis", "pipeline"):
            out[kind] = sum(1 for t in self.turns for e in t if e[0] == kind) / n
        prepared = [prepare_replay(ReplayTurn(t, 0, None), 0, "", "") for t in self.turns]
        steps = [step for turn in prepared for _, step in turn]
        units = [s for s in steps if isinstance(s, Tx)]
        # The turns' own work before their calls, as the paced replay reproduces it.
        out["work_ms"] = pct([sum(gap for gap, _ in turn) for turn in prepared] or [0], 0.5)
        out["units"] = len(units) / n
        out["autocommit"] = sum(1 for u in units if u.autocommit) / n
        return out


# --- raw replay ------------------------------------------------------------------------------


@dataclass
class Tx:
    """One captured transaction: what went between SQLAlchemy's begin and commit/rollback."""

    autocommit: bool  # no BEGIN was sent: each statement committed by itself
    statements: list[tuple[str, Any]] = field(default_factory=list)
    end: str = "rollback"


@dataclass
class ReplayTurn:
    events: list[Event]
    # Ids the captured turn wrote (its user message, its reply), to be mapped onto the ids the
    # replay writes, so the fencing UPDATE marks the replayed message as a real turn does.
    user_id: int
    reply_id: int | None


class IdMap:
    """Maps the ids a captured turn wrote onto the ids its replay writes."""

    def __init__(self, turn: ReplayTurn) -> None:
        self._turn = turn
        self.written: list[int] = []
        self._mapping: dict[int, int] = {}

    def params(self, statement: str, params: Any) -> Any:
        if self._mapping and statement.startswith("UPDATE messages"):
            return tuple(self._mapping.get(p, p) if type(p) is int else p for p in params)
        return params

    def saw(self, statement: str, rows: Sequence[Any]) -> None:
        if statement.startswith("INSERT INTO messages") and rows:
            new_id = rows[0][0]
            self.written.append(new_id)
            old = self._turn.user_id if len(self.written) == 1 else self._turn.reply_id
            if old is not None:
                self._mapping[old] = new_id


class PgRaw:
    """asyncpg, as SQLAlchemy's asyncpg adapter drives it: BEGIN before the first statement
    of a transaction and COMMIT/ROLLBACK after it, none for autocommit work."""

    label = "asyncpg"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def transaction(self, tx: Tx, ids: IdMap) -> None:
        if not tx.autocommit:
            await self.conn.execute("BEGIN")
        for statement, params in tx.statements:
            ids.saw(statement, await self.conn.fetch(statement, *ids.params(statement, params)))
        if not tx.autocommit:
            await self.conn.execute(tx.end.upper())

    async def query(self, statement: str) -> list[Any]:
        return list(await self.conn.fetch(statement))

    async def delete_messages(self, ids: list[int]) -> None:
        await self.conn.execute("DELETE FROM messages WHERE id = ANY($1::bigint[])", ids)

    async def aclose(self) -> None:
        await self.conn.close()


def _sqlite3_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    for pragma in SQLITE_PRAGMAS:
        conn.execute(pragma)
    return conn


def _sqlite3_transaction(conn: sqlite3.Connection, tx: Tx, ids: IdMap) -> None:
    # The module's own implicit transactions (BEGIN before the first write), as pysqlite
    # under SQLAlchemy gets them; COMMIT/ROLLBACK only where a transaction is open.
    for statement, params in tx.statements:
        ids.saw(statement, conn.execute(statement, ids.params(statement, params)).fetchall())
    if conn.in_transaction:
        conn.commit() if tx.end == "commit" else conn.rollback()


def _sqlite3_delete(conn: sqlite3.Connection, ids: list[int]) -> None:
    conn.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids)
    conn.commit()


class SqliteRaw:
    """The stdlib sqlite3 module, synchronously on the event loop: the floor (no thread hop
    at all, which an async program cannot afford: it blocks the loop while SQLite works)."""

    label = "sqlite3 (sync, on the loop)"

    def __init__(self, path: str) -> None:
        self.conn = _sqlite3_connect(path)

    async def transaction(self, tx: Tx, ids: IdMap) -> None:
        _sqlite3_transaction(self.conn, tx, ids)

    async def query(self, statement: str) -> list[Any]:
        return self.conn.execute(statement).fetchall()

    async def delete_messages(self, ids: list[int]) -> None:
        _sqlite3_delete(self.conn, ids)

    async def aclose(self) -> None:
        self.conn.close()


class ThreadHop:
    """One thread that runs functions for the event loop: a queue in, call_soon_threadsafe
    back, as aiosqlite does (about half the cost of loop.run_in_executor's futures)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="bench-sqlite3", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future, loop = call
            try:
                loop.call_soon_threadsafe(_resolve, future, fn(), None)
            except Exception as exc:
                loop.call_soon_threadsafe(_resolve, future, None, exc)

    async def run(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((fn, future, loop))
        return await future

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join()


def _resolve(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


async def hop_costs(samples: int) -> dict[int, float]:
    """p50 of a no-op hand-off to a thread and back (us), by the loop's busy time before it
    (us): what a call costs on top of its work on this machine, back to back and paced."""
    hop = ThreadHop()
    out = {}
    try:
        for before_us in (0, 200, 1000):
            times = []
            for _ in range(samples):
                busy_wait(before_us * 1000)
                t0 = time.perf_counter_ns()
                await hop.run(lambda: None)
                times.append(time.perf_counter_ns() - t0)
            out[before_us] = pct(times, 0.5) * 1000
    finally:
        hop.close()
    return out


class SqliteThreadRaw(SqliteRaw):
    """sqlite3 in a thread of its own, one hop per transaction: the fastest way for an async
    program to run the same statements and transactions without blocking its loop."""

    label = "sqlite3, one thread hop per transaction"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._hop = ThreadHop()

    async def transaction(self, tx: Tx, ids: IdMap) -> None:
        await self._hop.run(partial(_sqlite3_transaction, self.conn, tx, ids))

    async def aclose(self) -> None:
        self._hop.close()
        await super().aclose()


class AioSqliteRaw:
    """aiosqlite, one hop per statement and per COMMIT/ROLLBACK of an open transaction: how
    the same calls go through the async driver on its own."""

    label = "aiosqlite, one hop per statement"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, path: str) -> AioSqliteRaw:
        import aiosqlite

        conn = await aiosqlite.connect(path)
        for pragma in SQLITE_PRAGMAS:
            await conn.execute(pragma)
        return cls(conn)

    async def transaction(self, tx: Tx, ids: IdMap) -> None:
        for statement, params in tx.statements:
            rows = await self.conn.execute_fetchall(statement, ids.params(statement, params))
            ids.saw(statement, list(rows))
        if self.conn.in_transaction:
            await (self.conn.commit() if tx.end == "commit" else self.conn.rollback())

    async def query(self, statement: str) -> list[Any]:
        return list(await self.conn.execute_fetchall(statement))

    async def delete_messages(self, ids: list[int]) -> None:
        await self.conn.execute(
            f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids
        )
        await self.conn.commit()

    async def aclose(self) -> None:
        await self.conn.close()


def _suffixed(params: Any, suffix: str) -> Any:
    if not isinstance(params, tuple):
        return params
    return tuple(
        f"{p}{suffix}" if isinstance(p, str) and p.startswith(IDEM_MARK) else p for p in params
    )


def _rekeyed(args: tuple[Any, ...], old: str, new: str) -> tuple[Any, ...]:
    return tuple(
        a.replace(old, new, 1) if isinstance(a, str) and a.startswith(old) else a for a in args
    )


def _redis_call(args: tuple[Any, ...], options: dict[str, Any], old: str, new: str) -> Event:
    options = dict(options)
    if "keys" in options:
        options["keys"] = list(_rekeyed(tuple(options["keys"]), old, new))
    return (_rekeyed(args, old, new), options)


Step = Tx | Event


def prepare_replay(
    turn: ReplayTurn, n: int, redis_old: str, redis_new: str
) -> list[tuple[int, Step]]:
    """The turn's calls as steps: its transactions (a unique idempotency key) and its Redis
    commands and pipelines (keys under the replay prefix), in order. Statements sent outside
    BEGIN/COMMIT (autocommit, or a read on SQLite) are a step that sends no BEGIN.

    Each step comes with the time the turn spent on its own work before it (ns, from the
    previous call's return, or the turn's start, to this call's start, seen from the loop)."""
    out: list[tuple[int, Step]] = []
    tx: Tx | None = None
    gap = 0
    returned: int | None = None

    def emit(step: Step) -> None:
        nonlocal gap
        out.append((gap, step))
        gap = 0

    def flush() -> None:
        nonlocal tx
        if tx is not None and tx.statements:
            emit(tx)
        tx = None

    for ev in turn.events:
        kind = ev[0]
        if kind == "start":
            flush()
            gap = max(0, ev[1] - returned) if returned is not None else 0
        elif kind == "end":
            flush()
            returned = ev[1]
        elif kind == "begin":
            flush()
            tx = Tx(autocommit=ev[1])
        elif kind == "sql":
            if tx is None:
                tx = Tx(autocommit=True)
            tx.statements.append((ev[1], _suffixed(ev[2], f"-r{n}")))
        elif kind in ("commit", "rollback"):
            if tx is not None:
                tx.end = kind
            flush()
        elif kind == "redis":
            flush()
            emit(("redis", *_redis_call(ev[1], ev[2], redis_old, redis_new)))
        elif kind == "pipeline":
            flush()
            calls = tuple(_redis_call(a, o, redis_old, redis_new) for a, o in ev[2])
            emit(("pipeline", ev[1], calls))
        # pre-pings are counted, not replayed (see README)
    flush()
    return out


def busy_wait(ns: int) -> None:
    """Keep the event loop's thread busy for `ns`, as the turn's own work keeps it."""
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


async def replay(
    turn: ReplayTurn, steps: list[tuple[int, Step]], db: Any, redis: Any, *, paced: bool
) -> tuple[int, list[int]]:
    """Send one turn's calls with the bare drivers; (ns, ids of the rows it inserted).

    `paced`: before each call, the loop's thread is kept busy as long as the turn worked
    before it (untimed), so each call starts from the state it starts from in a turn. On a
    virtual machine a thread or server process that has slept longer takes longer to wake
    (`hop_costs` prints by how much); back to back (not paced), the calls get a discount
    that a turn, which always works between its calls, cannot have.
    """
    ids = IdMap(turn)
    total = 0
    for gap, step in steps:
        if paced:
            busy_wait(gap)
        t0 = time.perf_counter_ns()
        if isinstance(step, Tx):
            await db.transaction(step, ids)
        elif step[0] == "redis":
            await redis.execute_command(*step[1], **step[2])
        else:
            pipe = redis.pipeline(transaction=step[1])
            for args, options in step[2]:
                pipe.execute_command(*args, **options)
            await pipe.execute()
        total += time.perf_counter_ns() - t0
    return total, ids.written


async def run_replays(
    turns: list[ReplayTurn],
    reps: int,
    db: Any,
    redis: Any,
    redis_old: str,
    redis_new: str,
    *,
    paced: bool = False,
) -> list[int]:
    times = []
    n = 0
    for _ in range(reps):
        for turn in turns:
            n += 1
            steps = prepare_replay(turn, n, redis_old, redis_new)
            ns, written = await replay(turn, steps, db, redis, paced=paced)
            times.append(ns)
            if written:  # untimed: keep each conversation the size it had when captured
                await db.delete_messages(written)
    return times


# --- context load ----------------------------------------------------------------------------


def _exchange(i: int, style: str) -> tuple[str, str]:
    """The i-th earlier question and answer: one line each (~18 tokens), or, in the "answers"
    style, a two-line question (~38 tokens) and an answer of 15 lines (~300 tokens), about
    what an assistant writes to a question."""
    question = f"Earlier question {i}: could you remind me what the plan for step {i} was?"
    answer = f"Step {i} of the plan: check the figures, then write them down for the team."
    if style == LINES:
        return question, answer
    question += f" And who was going to send the figures for step {i}?"
    answer = " ".join(
        f"Step {i}.{k} of the plan: check the figures, then write them down for the team."
        for k in range(15)
    )
    return question, answer


def _bulk_rows(
    conversation_id: int,
    user_id: int,
    first_id: int,
    pairs: int,
    run: str,
    as_text: bool,
    style: str,
) -> list[tuple[Any, ...]]:
    """User messages each answered by an assistant message, kind 'chat', ids from first_id."""
    rows: list[tuple[Any, ...]] = []
    start = datetime.now(UTC) - timedelta(days=30)
    for i in range(pairs):
        uid, rid = first_id + 2 * i, first_id + 2 * i + 1
        at = start + timedelta(seconds=i)
        when: Any = at.strftime("%Y-%m-%d %H:%M:%S.%f") if as_text else at
        question, answer = _exchange(i, style)
        rows.append(
            (
                uid,
                conversation_id,
                user_id,
                "user",
                "chat",
                question,
                estimate_tokens(question),
                f"{IDEM_MARK}{run}-bulk-{conversation_id}-{i}",
                rid,
                when,
            )
        )
        rows.append(
            (
                rid,
                conversation_id,
                None,
                "assistant",
                "chat",
                answer,
                estimate_tokens(answer),
                None,
                None,
                when,
            )
        )
    return rows


COLUMNS = (
    "id",
    "conversation_id",
    "user_id",
    "role",
    "kind",
    "content",
    "token_count",
    "idempotency_key",
    "answered_by",
    "created_at",
)


async def bulk_insert_pg(
    conn: Any, conversation_id: int, user_msg: int, pairs: int, run: str, style: str
) -> None:
    user_id = await conn.fetchval("SELECT user_id FROM messages WHERE id = $1", user_msg)
    first = (await conn.fetchval("SELECT coalesce(max(id), 0) FROM messages")) + 1
    rows = _bulk_rows(conversation_id, user_id, first, pairs, run, as_text=False, style=style)
    await conn.copy_records_to_table("messages", records=rows, columns=list(COLUMNS))
    # Explicit ids do not move the sequence: move it, or the app's next insert collides.
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('messages', 'id'), (SELECT max(id) FROM messages))"
    )


def bulk_insert_sqlite(
    path: str, conversation_id: int, user_msg: int, pairs: int, run: str, style: str
) -> None:
    conn = sqlite3.connect(path)
    try:
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        user_id = conn.execute("SELECT user_id FROM messages WHERE id = ?", (user_msg,)).fetchone()[
            0
        ]
        first = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0] + 1
        rows = _bulk_rows(conversation_id, user_id, first, pairs, run, as_text=True, style=style)
        marks = ",".join("?" * len(COLUMNS))
        conn.executemany(f"INSERT INTO messages ({','.join(COLUMNS)}) VALUES ({marks})", rows)
        conn.commit()
    finally:
        conn.close()


# Earlier messages in the context-load cases: one line each, or assistant-sized answers.
LINES, ANSWERS = "lines", "answers"


@dataclass
class LoadCase:
    label: str
    size: int
    # True: one more turn through the app after the bulk load, so the conversation's summary
    # and boundary are what the store holds for a conversation of that length (the window
    # rolled over); False: history imported and never answered through the app since.
    settled: bool
    style: str = LINES


Pair = tuple[LoadCase, LoadCase]


def load_cases(sizes: Sequence[int]) -> list[LoadCase]:
    """One-line messages at every size (a window of 32 turns holds 64 of them, so a
    10-message conversation has the smaller window); the largest never rolled over; and the
    target pair, the smallest and largest with answers of ~300 tokens, where both windows
    hold 5 turns (the budget's half after a roll-over): what differs is the history alone."""
    small, large = sizes[0], sizes[-1]
    cases = [LoadCase(f"{s:,}", s, True) for s in sizes]
    cases.append(LoadCase(f"{large:,} (never rolled over)", large, False))
    cases.append(LoadCase(f"{small:,} (answers of ~300 tokens)", small, True, ANSWERS))
    cases.append(LoadCase(f"{large:,} (answers of ~300 tokens)", large, True, ANSWERS))
    return cases


async def context_bench(
    app: Parley,
    traffic: Traffic,
    res: SetupResult,
    sizes: Sequence[int],
    loads: int,
    insert: Callable[[int, int, int, str], Any],
) -> None:
    cases = load_cases(sizes)
    ids: dict[str, int] = {}
    for n, case in enumerate(cases):
        group = f"ctx{n}"
        recorded = await app.manager.handle(traffic.incoming(group, 0, 0))
        # The app's first turn wrote two messages, the settling turn writes two more.
        bulk = case.size - 2 - (2 if case.settled else 0)
        await insert(recorded.conversation_id, recorded.message_id, bulk // 2, case.style)
        # The rows were written behind the app's back: drop its cached window, as an import
        # tool would (the in-process cache is trusted, it has no other writer).
        await app.manager._context.invalidate(recorded.conversation_id)
        if case.settled:
            await app.manager.handle(traffic.incoming(group, 0, 1))
        ids[case.label] = recorded.conversation_id
    ctx = app.manager._context
    for case in cases:  # one untimed load each: statement caches, planner
        await ctx.invalidate(ids[case.label])  # the cached window, wherever it is kept
        await ctx.load(ids[case.label])
    res.cold = {c.label: [] for c in cases}
    res.warm = {c.label: [] for c in cases}
    res.turns_in_window = {}
    shuffle = random.Random(7).shuffle
    for _ in range(loads):
        # Interleaved, so drift on a noisy machine hits every case alike, and shuffled: in a
        # fixed order the case after the 400-row rebuild would always pay for it (a thread
        # woken after 3 ms of the loop's work, the garbage it left): 1.5x in one test.
        order = list(cases)
        shuffle(order)
        for case in order:
            cid = ids[case.label]
            await ctx.invalidate(cid)
            t0 = time.perf_counter_ns()
            window = await ctx.load(cid)
            t1 = time.perf_counter_ns()
            await ctx.load(cid)
            res.cold[case.label].append(t1 - t0)
            res.warm[case.label].append(time.perf_counter_ns() - t1)
            res.turns_in_window[case.label] = len(window.turns)
    by = {(c.size, c.style, c.settled): c for c in cases}
    small, middle, large = sizes[0], sizes[len(sizes) // 2], sizes[-1]
    res.context_pair = (by[large, ANSWERS, True], by[small, ANSWERS, True])
    res.lines_pair = (by[large, LINES, True], by[small, LINES, True])
    res.history_pair = (by[large, LINES, True], by[middle, LINES, True])


# --- one setup -------------------------------------------------------------------------------


@dataclass
class Plan:
    warm_convs: int = 10
    warm_turns: int = 4
    seq_convs: int = 50
    seq_turns: int = 8
    blocks: int = 4  # timed turns and raw replays alternate in this many blocks
    conc_convs: int = 100
    conc_turns: int = 5
    cap_convs: int = 12
    cap_turns: int = 8
    sizes: tuple[int, ...] = (10, 1_000, 100_000)
    loads: int = 50


def quick_plan() -> Plan:
    return Plan(
        warm_convs=4,
        warm_turns=2,
        seq_convs=10,
        seq_turns=4,
        blocks=2,
        conc_convs=20,
        conc_turns=3,
        cap_convs=4,
        cap_turns=4,
        sizes=(10, 1_000, 10_000),
        loads=10,
    )


async def run_setup(
    res: SetupResult,
    settings: Settings,
    plan: Plan,
    *,
    open_db: Callable[[], Any],
    open_others: Sequence[Callable[[], Any]],
    open_redis: Callable[[], Any] | None,
    insert: Callable[[int, int, int, str, str], Any],
) -> None:
    t_start = time.perf_counter()
    traffic = Traffic()
    async with Parley(settings, backend=InstantBackend()) as app:
        sink = CountingSink()
        app.manager.attach(PLATFORM, sink)

        # 0. warm-up: connections, prepared statements, code paths
        await sequential(app, traffic, "warm", plan.warm_convs, plan.warm_turns)

        # 1. capture what real turns send (listeners off again before anything is timed)
        capture = Capture(app)
        recorded: list[Any] = []
        capture.install()
        try:
            await sequential(
                app,
                traffic,
                "cap",
                plan.cap_convs,
                plan.cap_turns,
                on_turn=capture.new_turn,
                after_turn=lambda _t, r: recorded.append(r),
            )
        finally:
            capture.remove()
        res.per_turn = capture.counts()
        replay_turns = await _replay_turns(capture, recorded, open_db)

        # 2. timed turns and raw replays of the captured turns, alternating in blocks
        redis_new = f"{capture.redis_prefix}-replay" if capture.redis_prefix else ""
        redis_client = await open_redis() if open_redis is not None else None
        db = await open_db()
        others = [await open_other() for open_other in open_others]
        try:
            res.raw_label = db.label + (" + redis.asyncio" if redis_client is not None else "")
            res.raw_others = {other.label: [] for other in others}
            replays = partial(
                run_replays, replay_turns, 1, db, redis_client, capture.redis_prefix, redis_new
            )
            await replays()
            for other in others:
                await run_replays(replay_turns, 1, other, None, "", "")
            per_block = math.ceil(plan.seq_turns / plan.blocks)
            for block in range(plan.blocks):
                turns = range(block * per_block, min(plan.seq_turns, (block + 1) * per_block))
                res.turn_ns += await sequential(app, traffic, "seq", plan.seq_convs, turns)
                res.raw_ns += await replays(paced=True)
                res.raw_b2b_ns += await replays(paced=False)
                for other in others:
                    res.raw_others[other.label] += await run_replays(
                        replay_turns, 1, other, None, "", ""
                    )
        finally:
            for raw in [db, *others]:
                await raw.aclose()
            if redis_client is not None:
                await redis_client.aclose()

        # 3. concurrent conversations
        before = sink.replies
        seconds = await concurrent(app, traffic, "conc", plan.conc_convs, plan.conc_turns)
        res.throughput_turns = plan.conc_convs * plan.conc_turns
        res.throughput_replies = sink.replies - before
        res.throughput = res.throughput_replies / seconds

        # 4. context load, 10 vs 100,000 earlier messages
        await context_bench(
            app,
            traffic,
            res,
            plan.sizes,
            plan.loads,
            lambda cid, msg, pairs, style: insert(cid, msg, pairs, traffic.run, style),
        )
    res.seconds = time.perf_counter() - t_start


async def _replay_turns(
    capture: Capture, recorded: list[Any], open_db: Callable[[], Any]
) -> list[ReplayTurn]:
    db = await open_db()
    try:
        out = []
        for events, rec in zip(capture.turns, recorded, strict=True):
            rows = await db.query(f"SELECT answered_by FROM messages WHERE id = {rec.message_id}")
            out.append(ReplayTurn(events, rec.message_id, rows[0][0] if rows else None))
        return out
    finally:
        await db.aclose()


# --- the two setups --------------------------------------------------------------------------


def opened(cls: Callable[[str], Any], path: str) -> Callable[[], Any]:
    """An async opener for a raw class that opens synchronously."""

    async def open_raw() -> Any:
        return cls(path)

    return open_raw


async def embedded(plan: Plan) -> SetupResult:
    res = SetupResult("embedded", "SQLite file (WAL) + in-process MemoryCache")
    folder = tempfile.mkdtemp(prefix="parley-bench-")
    path = os.path.join(folder, "bench.db")
    try:
        settings = Settings(_env_file=None, database={"url": f"sqlite+aiosqlite:///{path}"})  # type: ignore[arg-type, call-arg]

        async def insert(cid: int, msg: int, pairs: int, run: str, style: str) -> None:
            await asyncio.to_thread(bulk_insert_sqlite, path, cid, msg, pairs, run, style)

        await run_setup(
            res,
            settings,
            plan,
            open_db=opened(SqliteThreadRaw, path),
            open_others=[lambda: AioSqliteRaw.open(path), opened(SqliteRaw, path)],
            open_redis=None,
            insert=insert,
        )
        res.hops = await hop_costs(300)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return res


async def services(plan: Plan) -> SetupResult:
    res = SetupResult("services", "PostgreSQL + Redis")
    try:
        import asyncpg
        import redis.asyncio as aioredis
    except ImportError as exc:
        res.skipped = f"driver missing: {exc}"
        return res
    admin = os.environ.get("PARLEY_BENCH_POSTGRES_URL", DEFAULT_PG_ADMIN)
    redis_url = os.environ.get("PARLEY_BENCH_REDIS_URL", DEFAULT_REDIS)
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    prefix = f"parley-bench-{uuid.uuid4().hex[:10]}"
    try:
        conn = await asyncpg.connect(admin, timeout=5)
        probe = aioredis.Redis.from_url(redis_url, socket_timeout=2)
        await probe.ping()
        await probe.aclose()
    except Exception as exc:
        res.skipped = f"PostgreSQL or Redis not reachable: {type(exc).__name__}: {exc}"
        return res
    base = admin.rpartition("/")[0]
    dsn = f"{base}/{name}"
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database={
                "url": dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                "auto_migrate": True,
            },
            redis={"url": redis_url, "key_prefix": prefix},
        )

        async def open_db() -> PgRaw:
            return PgRaw(await asyncpg.connect(dsn))

        async def open_redis() -> Any:
            return aioredis.Redis.from_url(redis_url)

        async def insert(cid: int, msg: int, pairs: int, run: str, style: str) -> None:
            c = await asyncpg.connect(dsn)
            try:
                await bulk_insert_pg(c, cid, msg, pairs, run, style)
                await c.execute("ANALYZE messages")  # what autovacuum does after a bulk load
            finally:
                await c.close()

        await run_setup(
            res,
            settings,
            plan,
            open_db=open_db,
            open_others=[],
            open_redis=open_redis,
            insert=insert,
        )
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
        cleanup = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in cleanup.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await cleanup.delete(*keys)
        finally:
            await cleanup.aclose()
    return res


# --- report ----------------------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return f"{_ratio(value)} {'PASS' if value <= target else 'MISS'}"


def _cases(pair: Pair) -> str:
    return f"{pair[0].size:,} / {pair[1].size:,}"


def _turns(res: SetupResult, pair: Pair) -> str:
    big, small = (res.turns_in_window[case.label] for case in pair)
    return f"{big} and {small} turns in the window"


def report(res: SetupResult, plan: Plan) -> None:
    print(f"\n== {res.name}: {res.label} ==")
    if res.skipped:
        print(f"  skipped: {res.skipped}")
        return
    n_seq = len(res.turn_ns)
    row = "  {:<56} {:>9} {:>9}"
    print(row.format("", "p50 ms", "p99 ms"))
    raws = [(f"raw: same calls, {res.raw_label}", res.raw_ns)]
    raws += [("  the same, back to back (not paced as in the turns)", res.raw_b2b_ns)]
    raws += [(f"  for reference: {label}", ns) for label, ns in res.raw_others.items()]
    for label, ns in [(f"turn: manager.handle ({n_seq} sequential)", res.turn_ns), *raws]:
        print(row.format(label, f"{pct(ns, 0.5):.3f}", f"{pct(ns, 0.99):.3f}"))
    ratio = res.overhead_ratio
    print(
        f"  overhead ratio turn p50 / raw p50: {_verdict(ratio, OVERHEAD_TARGET)}"
        f" (target <= {OVERHEAD_TARGET:.1f}x)"
    )
    if res.hops:
        costs = ", ".join(f"{us:.0f} us after {before} us" for before, us in res.hops.items())
        print(f"  a no-op thread hop, by the loop's busy time before it: {costs}")
    others = [("the same calls back to back", res.raw_b2b_ns), *res.raw_others.items()]
    for label, ns in others:
        print(f"    against {label}: {pct(res.turn_ns, 0.5) / pct(ns, 0.5):.2f}x")
    c = res.per_turn
    print(
        f"  calls per turn (captured): {c['sql']:.1f} SQL in {c['units']:.1f} units"
        f" ({c['autocommit']:.1f} autocommit: no BEGIN; {c['commit']:.1f} commit,"
        f" {c['rollback']:.1f} rollback), {c['redis']:.1f} Redis commands,"
        f" {c['pipeline']:.1f} Redis pipelines, {c['ping']:.1f} pool pre-ping (not replayed);"
        f" paced by the turns' own work before the calls, p50 {c['work_ms']:.3f} ms a turn"
    )
    print(
        f"  throughput: {plan.conc_convs} conversations x {plan.conc_turns} turns concurrently: "
        f"{res.throughput:.0f} turns/s ({res.throughput_replies}/{res.throughput_turns} replies)"
    )
    print(
        f"  context load p50/p99 ms, by earlier messages {'cold (from SQL)':>15}"
        f" {'warm (cached)':>16}"
        f" {'turns':>6}"
    )
    for label, cold in res.cold.items():
        warm = res.warm[label]
        print(
            f"    {label:<40} {pct(cold, 0.5):>7.3f}/{pct(cold, 0.99):<7.2f}"
            f" {pct(warm, 0.5):>7.3f}/{pct(warm, 0.99):<7.2f} {res.turns_in_window[label]:>5}"
        )
    if res.context_pair is not None:
        print(
            f"  cold load {_cases(res.context_pair)}, answers of ~300 tokens:"
            f" {_verdict(res.context_ratio, CONTEXT_TARGET)} (target <= {CONTEXT_TARGET:.1f}x;"
            f" {_turns(res, res.context_pair)}: only the history differs)"
        )
    for pair in (res.history_pair, res.lines_pair):
        if pair is not None:
            big, small = pair
            what = "more context, not more history"
            if res.turns_in_window[big.label] <= res.turns_in_window[small.label] + 1:
                what = f"{big.size // small.size}x the history"
            print(
                f"    one-line messages, cold load {_cases(pair)}:"
                f" {_ratio(res.cold_ratio(pair))} ({_turns(res, pair)}: {what})"
            )
    print(f"  setup ran {res.seconds:.1f}s")


def summary(results: list[SetupResult]) -> None:
    print("\n== summary ==")
    head = "  {:<42}" + " {:>16}" * len(results)
    print(head.format("target", *(r.name for r in results)))
    print(
        head.format(
            f"turn p50 / raw p50 <= {OVERHEAD_TARGET:.1f}x",
            *(_verdict(r.overhead_ratio, OVERHEAD_TARGET) for r in results),
        )
    )
    print(
        head.format(
            f"cold context load largest/10 <= {CONTEXT_TARGET:.1f}x",
            *(_verdict(r.context_ratio, CONTEXT_TARGET) for r in results),
        )
    )
    print(
        head.format(
            "  the same with one-line messages",
            *(_ratio(r.cold_ratio(r.lines_pair)) for r in results),
        )
    )
    print(
        head.format(
            "turn p50 ms", *(f"{pct(r.turn_ns, 0.5):.3f}" if r.turn_ns else "n/a" for r in results)
        )
    )
    print(
        head.format(
            "throughput turns/s", *(f"{r.throughput:.0f}" if r.turn_ns else "n/a" for r in results)
        )
    )


async def main_async(args: argparse.Namespace) -> None:
    plan = quick_plan() if args.quick else Plan()
    print(
        f"Parley core overhead bench: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores"
        f"{' (quick)' if args.quick else ''}"
    )
    results = []
    if args.only in (None, "embedded"):
        results.append(await embedded(plan))
        report(results[-1], plan)
    if args.only in (None, "services"):
        results.append(await services(plan))
        report(results[-1], plan)
    summary(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--only", choices=("embedded", "services"))
    args = parser.parse_args()
    # The bench picks its own setups: Parley settings from the environment must not leak in.
    for name in [
        k for k in os.environ if k.startswith("PARLEY_") and not k.startswith("PARLEY_BENCH_")
    ]:
        del os.environ[name]
    logging.disable(logging.WARNING)  # turns and migrations log at INFO/WARNING; errors show
    try:
        asyncio.run(main_async(args))
    except Exception as exc:
        print(f"\nbench aborted: {type(exc).__name__}: {exc}", file=sys.stderr)
        import traceback

        traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
