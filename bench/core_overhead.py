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
   commands that real turns sent, captured with SQLAlchemy engine events and a wrapper around
   the Redis client's `execute_command`, replayed per turn with the bare drivers (asyncpg,
   sqlite3 / aiosqlite, redis.asyncio), and the ratio turn p50 / raw p50;
4. context load: `ContextLoader.load` for conversations with 10, 1,000 and 100,000 earlier
   messages (bulk-inserted in the store's shape), cold (cache entry deleted: rebuilt from SQL)
   and warm (cached).

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
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event

from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bot.app import Parley
from bot.settings import Settings
from bot.storage.database import SQLITE_PRAGMAS
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
    raw_ns: list[int] = field(default_factory=list)
    raw_floor_ns: list[int] = field(default_factory=list)  # SQLite only: sync sqlite3
    raw_label: str = ""
    per_turn: dict[str, float] = field(default_factory=dict)
    throughput: float = 0.0
    throughput_turns: int = 0
    throughput_replies: int = 0
    cold: dict[str, list[int]] = field(default_factory=dict)
    warm: dict[str, list[int]] = field(default_factory=dict)
    turns_in_window: dict[str, int] = field(default_factory=dict)
    context_pair: tuple[str, str] = ("", "")  # (largest, smallest) settled case labels
    seconds: float = 0.0

    @property
    def overhead_ratio(self) -> float | None:
        if not self.turn_ns or not self.raw_ns:
            return None
        return pct(self.turn_ns, 0.5) / pct(self.raw_ns, 0.5)

    @property
    def context_ratio(self) -> float | None:
        big, small = self.context_pair
        if big not in self.cold or small not in self.cold:
            return None
        return pct(self.cold[big], 0.5) / pct(self.cold[small], 0.5)


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


class Capture:
    """Records what the turns send: SQL (+ transaction boundaries), pool pings, Redis commands.

    Listeners are installed only for the capture pass, never while turns are being timed.
    """

    def __init__(self, app: Parley) -> None:
        self.turns: list[list[Event]] = []
        self.current: list[Event] | None = None
        self._engine = app.store._engine.sync_engine
        self._dialect = self._engine.dialect
        self._client = getattr(app.manager._cache, "_client", None)  # RedisCache's client
        self.redis_prefix = getattr(app.manager._cache, "_prefix", "")

    def new_turn(self) -> None:
        self.current = []
        self.turns.append(self.current)

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
        self._add(("begin",))

    def _commit(self, conn: Any) -> None:
        self._add(("commit",))

    def _rollback(self, conn: Any) -> None:
        self._add(("rollback",))

    def install(self) -> None:
        event.listen(self._engine, "before_cursor_execute", self._sql)
        event.listen(self._engine, "begin", self._begin)
        event.listen(self._engine, "commit", self._commit)
        event.listen(self._engine, "rollback", self._rollback)
        original_ping = self._dialect.do_ping

        def counting_ping(dbapi_connection: Any) -> bool:
            self._add(("ping",))
            return bool(original_ping(dbapi_connection))

        self._dialect.do_ping = counting_ping  # type: ignore[method-assign]
        if self._client is not None:
            original = self._client.execute_command

            async def recording(*args: Any, **options: Any) -> Any:
                self._add(("redis", args, options))
                return await original(*args, **options)

            self._client.execute_command = recording

    def remove(self) -> None:
        self.current = None
        event.remove(self._engine, "before_cursor_execute", self._sql)
        event.remove(self._engine, "begin", self._begin)
        event.remove(self._engine, "commit", self._commit)
        event.remove(self._engine, "rollback", self._rollback)
        del self._dialect.do_ping
        if self._client is not None:
            del self._client.execute_command

    def counts(self) -> dict[str, float]:
        n = max(1, len(self.turns))
        out: dict[str, float] = {}
        for kind in ("sql", "begin", "commit", "rollback", "ping", "redis"):
            out[kind] = sum(1 for t in self.turns for e in t if e[0] == kind) / n
        return out


# --- raw replay ------------------------------------------------------------------------------


class PgRaw:
    """asyncpg, as SQLAlchemy's asyncpg adapter drives it: BEGIN sent lazily before the first
    statement of a transaction, COMMIT/ROLLBACK only if one was started."""

    label = "asyncpg"

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._begun = self._started = False

    def begin(self) -> None:
        self._begun = True

    async def sql(self, statement: str, params: Sequence[Any]) -> list[Any]:
        if self._begun and not self._started:
            await self.conn.execute("BEGIN")
            self._started = True
        return list(await self.conn.fetch(statement, *params))

    async def end(self, how: str) -> None:
        if self._started:
            await self.conn.execute(how.upper())
        self._begun = self._started = False

    async def delete_messages(self, ids: list[int]) -> None:
        await self.conn.execute("DELETE FROM messages WHERE id = ANY($1::bigint[])", ids)


class SqliteRaw:
    """The stdlib sqlite3 module, synchronously: the floor (no thread hop at all). Its own
    implicit transactions are the ones aiosqlite (under SQLAlchemy) gets too."""

    label = "sqlite3 (sync)"

    def __init__(self, path: str) -> None:
        self.conn: Any = sqlite3.connect(path)
        for pragma in SQLITE_PRAGMAS:
            self.conn.execute(pragma)

    def begin(self) -> None:
        pass

    async def sql(self, statement: str, params: Sequence[Any]) -> list[Any]:
        return list(self.conn.execute(statement, params).fetchall())

    async def end(self, how: str) -> None:
        if how == "commit":
            self.conn.commit()
        else:
            self.conn.rollback()

    async def delete_messages(self, ids: list[int]) -> None:
        self.conn.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids)
        self.conn.commit()

    async def aclose(self) -> None:
        self.conn.close()


class AioSqliteRaw(SqliteRaw):
    """aiosqlite, the driver the embedded setup runs on: one thread hop per call."""

    label = "aiosqlite"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, path: str) -> AioSqliteRaw:
        import aiosqlite

        conn = await aiosqlite.connect(path)
        for pragma in SQLITE_PRAGMAS:
            await conn.execute(pragma)
        return cls(conn)

    async def sql(self, statement: str, params: Sequence[Any]) -> list[Any]:
        return list(await self.conn.execute_fetchall(statement, params))

    async def end(self, how: str) -> None:
        await (self.conn.commit() if how == "commit" else self.conn.rollback())

    async def delete_messages(self, ids: list[int]) -> None:
        await self.conn.execute(
            f"DELETE FROM messages WHERE id IN ({','.join('?' * len(ids))})", ids
        )
        await self.conn.commit()

    async def aclose(self) -> None:
        await self.conn.close()


@dataclass
class ReplayTurn:
    events: list[Event]
    # Ids the captured turn wrote (its user message, its reply), to be mapped onto the ids the
    # replay writes, so the fencing UPDATE marks the replayed message as a real turn does.
    user_id: int
    reply_id: int | None


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


def prepare_replay(turn: ReplayTurn, n: int, redis_old: str, redis_new: str) -> list[Event]:
    """The turn's events with a unique idempotency key and Redis keys under the replay prefix."""
    out: list[Event] = []
    for ev in turn.events:
        if ev[0] == "sql":
            out.append(("sql", ev[1], _suffixed(ev[2], f"-r{n}")))
        elif ev[0] == "redis":
            options = dict(ev[2])
            if "keys" in options:
                options["keys"] = list(_rekeyed(tuple(options["keys"]), redis_old, redis_new))
            out.append(("redis", _rekeyed(ev[1], redis_old, redis_new), options))
        elif ev[0] != "ping":  # pre-pings are counted, not replayed (see README)
            out.append(ev)
    return out


async def replay(
    turn: ReplayTurn, events: list[Event], db: Any, redis: Any
) -> tuple[int, list[int]]:
    """Send one turn's calls with the bare drivers; (ns, ids of the rows it inserted)."""
    written: list[int] = []
    mapping: dict[int, int] = {}
    t0 = time.perf_counter_ns()
    for ev in events:
        kind = ev[0]
        if kind == "sql":
            statement, params = ev[1], ev[2]
            if mapping and statement.startswith("UPDATE messages"):
                params = tuple(mapping.get(p, p) if type(p) is int else p for p in params)
            rows = await db.sql(statement, params)
            if statement.startswith("INSERT INTO messages") and rows:
                new_id = rows[0][0]
                written.append(new_id)
                old = turn.user_id if len(written) == 1 else turn.reply_id
                if old is not None:
                    mapping[old] = new_id
        elif kind == "begin":
            db.begin()
        elif kind in ("commit", "rollback"):
            await db.end(kind)
        elif kind == "redis":
            await redis.execute_command(*ev[1], **ev[2])
    return time.perf_counter_ns() - t0, written


async def run_replays(
    turns: list[ReplayTurn], reps: int, db: Any, redis: Any, redis_old: str, redis_new: str
) -> list[int]:
    times = []
    n = 0
    for _ in range(reps):
        for turn in turns:
            n += 1
            events = prepare_replay(turn, n, redis_old, redis_new)
            ns, written = await replay(turn, events, db, redis)
            times.append(ns)
            if written:  # untimed: keep each conversation the size it had when captured
                await db.delete_messages(written)
    return times


# --- context load ----------------------------------------------------------------------------


def _bulk_rows(
    conversation_id: int, user_id: int, first_id: int, pairs: int, run: str, as_text: bool
) -> list[tuple[Any, ...]]:
    """User messages each answered by an assistant message, kind 'chat', ids from first_id."""
    rows: list[tuple[Any, ...]] = []
    start = datetime.now(UTC) - timedelta(days=30)
    for i in range(pairs):
        uid, rid = first_id + 2 * i, first_id + 2 * i + 1
        at = start + timedelta(seconds=i)
        when: Any = at.strftime("%Y-%m-%d %H:%M:%S.%f") if as_text else at
        question = f"Earlier question {i}: could you remind me what the plan for step {i} was?"
        answer = f"Step {i} of the plan: check the figures, then write them down for the team."
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
    conn: Any, conversation_id: int, user_msg: int, pairs: int, run: str
) -> None:
    user_id = await conn.fetchval("SELECT user_id FROM messages WHERE id = $1", user_msg)
    first = (await conn.fetchval("SELECT coalesce(max(id), 0) FROM messages")) + 1
    rows = _bulk_rows(conversation_id, user_id, first, pairs, run, as_text=False)
    await conn.copy_records_to_table("messages", records=rows, columns=list(COLUMNS))
    # Explicit ids do not move the sequence: move it, or the app's next insert collides.
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('messages', 'id'), (SELECT max(id) FROM messages))"
    )


def bulk_insert_sqlite(
    path: str, conversation_id: int, user_msg: int, pairs: int, run: str
) -> None:
    conn = sqlite3.connect(path)
    try:
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        user_id = conn.execute("SELECT user_id FROM messages WHERE id = ?", (user_msg,)).fetchone()[
            0
        ]
        first = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0] + 1
        rows = _bulk_rows(conversation_id, user_id, first, pairs, run, as_text=True)
        marks = ",".join("?" * len(COLUMNS))
        conn.executemany(f"INSERT INTO messages ({','.join(COLUMNS)}) VALUES ({marks})", rows)
        conn.commit()
    finally:
        conn.close()


@dataclass
class LoadCase:
    label: str
    size: int
    # True: one more turn through the app after the bulk load, so the conversation's summary
    # and boundary are what the store holds for a conversation of that length (the window
    # rolled over); False: history imported and never answered through the app since.
    settled: bool


async def context_bench(
    app: Parley,
    traffic: Traffic,
    res: SetupResult,
    sizes: Sequence[int],
    loads: int,
    insert: Callable[[int, int, int], Any],
) -> None:
    cases = [LoadCase(f"{s:,}", s, True) for s in sizes]
    cases.append(LoadCase(f"{sizes[-1]:,} (never rolled over)", sizes[-1], False))
    ids: dict[str, int] = {}
    for n, case in enumerate(cases):
        group = f"ctx{n}"
        recorded = await app.manager.handle(traffic.incoming(group, 0, 0))
        # The app's first turn wrote two messages, the settling turn writes two more.
        bulk = case.size - 2 - (2 if case.settled else 0)
        await insert(recorded.conversation_id, recorded.message_id, bulk // 2)
        # The rows were written behind the app's back: drop its cached window, as an import
        # tool would (the in-process cache is trusted, it has no other writer).
        await app.manager._context.invalidate(recorded.conversation_id)
        if case.settled:
            await app.manager.handle(traffic.incoming(group, 0, 1))
        ids[case.label] = recorded.conversation_id
    ctx, cache = app.manager._context, app.manager._cache
    for case in cases:  # one untimed load each: statement caches, planner
        await cache.delete(ctx._key(ids[case.label]))
        await ctx.load(ids[case.label])
    res.cold = {c.label: [] for c in cases}
    res.warm = {c.label: [] for c in cases}
    res.turns_in_window = {}
    for _ in range(loads):
        for case in cases:  # interleaved, so drift on a noisy machine hits every case alike
            cid = ids[case.label]
            await cache.delete(ctx._key(cid))
            t0 = time.perf_counter_ns()
            window = await ctx.load(cid)
            t1 = time.perf_counter_ns()
            await ctx.load(cid)
            res.cold[case.label].append(t1 - t0)
            res.warm[case.label].append(time.perf_counter_ns() - t1)
            res.turns_in_window[case.label] = len(window.turns)
    res.context_pair = (cases[len(sizes) - 1].label, cases[0].label)


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
    open_floor: Callable[[], Any] | None,
    open_redis: Callable[[], Any] | None,
    insert: Callable[[int, int, int, str], Any],
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
        floor = open_floor() if open_floor is not None else None
        try:
            res.raw_label = db.label + (" + redis.asyncio" if redis_client is not None else "")
            await run_replays(replay_turns, 1, db, redis_client, capture.redis_prefix, redis_new)
            if floor is not None:
                await run_replays(replay_turns, 1, floor, None, "", "")
            per_block = math.ceil(plan.seq_turns / plan.blocks)
            for block in range(plan.blocks):
                turns = range(block * per_block, min(plan.seq_turns, (block + 1) * per_block))
                res.turn_ns += await sequential(app, traffic, "seq", plan.seq_convs, turns)
                res.raw_ns += await run_replays(
                    replay_turns, 1, db, redis_client, capture.redis_prefix, redis_new
                )
                if floor is not None:
                    res.raw_floor_ns += await run_replays(replay_turns, 1, floor, None, "", "")
        finally:
            await _close(db)
            if floor is not None:
                await floor.aclose()
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
            lambda cid, msg, pairs: insert(cid, msg, pairs, traffic.run),
        )
    res.seconds = time.perf_counter() - t_start


async def _replay_turns(
    capture: Capture, recorded: list[Any], open_db: Callable[[], Any]
) -> list[ReplayTurn]:
    db = await open_db()
    try:
        out = []
        for events, rec in zip(capture.turns, recorded, strict=True):
            rows = await db.sql(
                "SELECT answered_by FROM messages WHERE id = " + str(rec.message_id), ()
            )
            await db.end("rollback")
            out.append(ReplayTurn(events, rec.message_id, rows[0][0] if rows else None))
        return out
    finally:
        await _close(db)


async def _close(db: Any) -> None:
    if hasattr(db, "aclose"):
        await db.aclose()
    elif hasattr(db, "conn") and hasattr(db.conn, "close"):
        await db.conn.close()


# --- the two setups --------------------------------------------------------------------------


async def embedded(plan: Plan) -> SetupResult:
    res = SetupResult("embedded", "SQLite file (WAL) + in-process MemoryCache")
    folder = tempfile.mkdtemp(prefix="parley-bench-")
    path = os.path.join(folder, "bench.db")
    try:
        settings = Settings(_env_file=None, database={"url": f"sqlite+aiosqlite:///{path}"})  # type: ignore[arg-type, call-arg]

        async def insert(cid: int, msg: int, pairs: int, run: str) -> None:
            await asyncio.to_thread(bulk_insert_sqlite, path, cid, msg, pairs, run)

        await run_setup(
            res,
            settings,
            plan,
            open_db=lambda: AioSqliteRaw.open(path),
            open_floor=lambda: SqliteRaw(path),
            open_redis=None,
            insert=insert,
        )
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

        async def insert(cid: int, msg: int, pairs: int, run: str) -> None:
            c = await asyncpg.connect(dsn)
            try:
                await bulk_insert_pg(c, cid, msg, pairs, run)
                await c.execute("ANALYZE messages")  # what autovacuum does after a bulk load
            finally:
                await c.close()

        await run_setup(
            res,
            settings,
            plan,
            open_db=open_db,
            open_floor=None,
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


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x {'PASS' if value <= target else 'MISS'}"


def report(res: SetupResult, plan: Plan) -> None:
    print(f"\n== {res.name}: {res.label} ==")
    if res.skipped:
        print(f"  skipped: {res.skipped}")
        return
    n_seq = len(res.turn_ns)
    row = "  {:<44} {:>9} {:>9}"
    print(row.format("", "p50 ms", "p99 ms"))
    print(
        row.format(
            f"turn: manager.handle ({n_seq} sequential)",
            f"{pct(res.turn_ns, 0.5):.3f}",
            f"{pct(res.turn_ns, 0.99):.3f}",
        )
    )
    print(
        row.format(
            f"raw: same calls, {res.raw_label}",
            f"{pct(res.raw_ns, 0.5):.3f}",
            f"{pct(res.raw_ns, 0.99):.3f}",
        )
    )
    if res.raw_floor_ns:
        print(
            row.format(
                "raw floor: same SQL, sqlite3 (sync)",
                f"{pct(res.raw_floor_ns, 0.5):.3f}",
                f"{pct(res.raw_floor_ns, 0.99):.3f}",
            )
        )
    ratio = res.overhead_ratio
    print(
        f"  overhead ratio turn p50 / raw p50: {_verdict(ratio, OVERHEAD_TARGET)}"
        f" (target <= {OVERHEAD_TARGET:.1f}x)"
    )
    if res.raw_floor_ns:
        floor = pct(res.turn_ns, 0.5) / pct(res.raw_floor_ns, 0.5)
        print(f"  (against the sync sqlite3 floor: {floor:.2f}x)")
    c = res.per_turn
    print(
        f"  calls per turn (captured): {c['sql']:.1f} SQL, {c['begin']:.1f} begin, "
        f"{c['commit']:.1f} commit, {c['rollback']:.1f} rollback, {c['redis']:.1f} Redis, "
        f"{c['ping']:.1f} pool pre-ping (not replayed)"
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
    big, small = res.context_pair
    print(
        f"  cold load {big} / {small}: {_verdict(res.context_ratio, CONTEXT_TARGET)}"
        f" (target <= {CONTEXT_TARGET:.1f}x)"
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
