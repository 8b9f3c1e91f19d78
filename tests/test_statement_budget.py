"""The statement budget of a turn: SQL statements and Redis commands, per turn type (issue 19).

Counted through public hooks only: SQLAlchemy's `before_cursor_execute` and `commit` events on
the app's engine (a commit is a round trip of its own; BEGIN is not a cursor statement on
every driver, so transactions are counted by their commits), and the commands a Redis server
of the test's own runs, read with MONITOR (see RedisCommands). A change that adds a statement
or a command to a turn has to change the numbers here.

Turn types: a conversation's first chat turn (a new sender and conversation), a later chat
turn, a command turn (/help), a chat turn where a help desk reaches the conversation (its
handoff signals are kept), and a cold load (a new process, nothing cached: the window is
rebuilt from SQL).
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import event

from bot.app import Parley
from bot.settings import Settings
from bot.storage.migrate import upgrade
from bot.types import ConversationKey, Incoming, User
from tests.doubles import AnyDesk, CollectingSink, ScriptedBackend
from tests.redis_server import PrivateRedis

KEY = ConversationKey("test", "budget-chat")
USER = User("test", "u1", "Ada", language="en")
# A turn in another conversation first, so that what a process does once (connections to
# Redis, its first heartbeat) is not counted to the turns measured.
WARM_KEY, WARM_USER = ConversationKey("test", "warm-up"), User("test", "u0", "Bo")
START, END = "budget-start", "budget-end"


@dataclass
class Counts:
    sql: collections.Counter[str] = field(default_factory=collections.Counter)
    commits: int = 0
    # Of `sql`, the statements on the store's relaxed engine (committed without waiting for
    # the disk, bot.storage.database.create_relaxed_engine).
    relaxed: int = 0
    redis: collections.Counter[str] = field(default_factory=collections.Counter)
    # What SQLAlchemy executed: a statement from its compiled cache is the same object each
    # time (ExecutionContext.compiled), one compiled again is a new one.
    compiled: list[Any] = field(default_factory=list)

    @property
    def statements(self) -> int:
        return sum(self.sql.values())

    @property
    def commands(self) -> int:
        return sum(self.redis.values())


@contextmanager
def counting_sql(app: Parley, counts: Counts) -> Iterator[None]:
    """Statements and commits on the store's engine, its relaxed engine and its lease
    keeper's, where they are others."""
    store = app.store
    every = (store.engine, store.relaxed_engine, store.keeper_engine)
    engines = {id(e): e for e in every}.values()

    def listener(relaxed: bool) -> Any:
        def on_statement(
            _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
        ) -> None:
            counts.sql[statement.split(None, 1)[0].upper()] += 1
            counts.relaxed += relaxed
            if context.compiled is not None:
                counts.compiled.append(context.compiled)

        return on_statement

    def on_commit(_conn: Any) -> None:
        counts.commits += 1

    hooks = [(e, listener(e is not app.store.engine)) for e in engines]
    for engine, on_statement in hooks:
        event.listen(engine.sync_engine, "before_cursor_execute", on_statement)
        event.listen(engine.sync_engine, "commit", on_commit)
    try:
        yield
    finally:
        for engine, on_statement in hooks:
            event.remove(engine.sync_engine, "before_cursor_execute", on_statement)
            event.remove(engine.sync_engine, "commit", on_commit)


class RedisCommands:
    """The commands a Redis server runs while the block runs, by name, read with MONITOR
    between two ECHO markers of this test's own. Left out: commands run inside a Lua script
    (the script is the one round trip) and the worker's liveness heartbeat (`alive:` keys, a
    per-process beat every second, not part of any turn)."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self.found: collections.Counter[str] = collections.Counter()

    async def __aenter__(self) -> RedisCommands:
        self._monitor = self._client.monitor()
        await self._monitor.__aenter__()
        await self._read_until(START, count=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self._read_until(END, count=True)
        finally:
            await self._monitor.__aexit__(*exc)

    async def _read_until(self, marker: str, *, count: bool) -> None:
        await self._client.echo(marker)
        while True:
            seen = await self._monitor.next_command()
            words = seen["command"].split(" ")
            if words[:2] == ["ECHO", marker]:
                return
            heartbeat = any(":alive:" in w or w.startswith("alive:") for w in words[1:2])
            if count and seen["client_type"] != "lua" and not heartbeat:
                self.found[words[0].lower()] += 1


async def measure(app: Parley, redis: Redis | None, text: str, ikey: str) -> Counts:
    """The statements and commands of one turn, from the message's arrival to its answer."""
    counts = Counts()
    turn = Incoming(KEY, USER, text, idempotency_key=ikey)
    if redis is None:
        with counting_sql(app, counts):
            await app.manager.handle(turn)
        return counts
    async with RedisCommands(redis) as commands:
        with counting_sql(app, counts):
            await app.manager.handle(turn)
    counts.redis = commands.found
    return counts


@pytest.fixture
async def redis(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(private_redis.url)
    yield client
    await client.aclose()


def settings_for(database_url: str, redis_url: str | None, prefix: str) -> Settings:
    redis = {"url": redis_url, "key_prefix": prefix} if redis_url else {}
    return Settings(
        database={"url": database_url},  # type: ignore[arg-type]
        redis=redis,  # type: ignore[arg-type]
        # No sweep, and no lease renewal within a turn: periodic work, not a turn's. Token
        # usage is written behind, one statement per flush for every turn in between
        # (budget.usage_flush_s): none falls within a measured turn here.
        conversation={"sweep_interval_s": 0, "lock_ttl_s": 60},  # type: ignore[arg-type]
        budget={"usage_flush_s": 3600},  # type: ignore[arg-type]
    )


async def warm_up(app: Parley, ikey: str) -> None:
    app.manager.attach("test", CollectingSink())
    await app.manager.handle(Incoming(WARM_KEY, WARM_USER, "warm up", idempotency_key=ikey))


async def turns(settings: Settings, redis: Redis | None) -> dict[str, Counts]:
    found: dict[str, Counts] = {}
    async with Parley(settings, backend=ScriptedBackend()) as app:
        await warm_up(app, "w1")
        found["first"] = await measure(app, redis, "hello", "m1")
        found["chat"] = await measure(app, redis, "and again", "m2")
        found["command"] = await measure(app, redis, "/help", "m3")
        again = await measure(app, redis, "and once more", "m5")
        command_again = await measure(app, redis, "/help", "m6")
        app.desk.attach(AnyDesk())
        found["desk"] = await measure(app, redis, "and with a desk", "m7")
    assert compiled_again(found["chat"], again) == []
    assert compiled_again(found["command"], command_again) == []
    return found


def compiled_again(earlier: Counts, later: Counts) -> list[str]:
    """The statements of `later` that SQLAlchemy compiled again, where `earlier` ran the same
    ones: a statement it cannot cache costs its compilation (about 0.3 ms of CPU) each turn."""
    seen = {id(c) for c in earlier.compiled}
    return [str(c) for c in later.compiled if id(c) not in seen]


async def cold(settings: Settings, redis: Redis | None) -> Counts:
    async with Parley(settings, backend=ScriptedBackend()) as app:
        await warm_up(app, "w2")
        return await measure(app, redis, "after a restart", "m4")


# Per turn: SQL statements by verb, commits, statements on the relaxed engine, Redis commands by
# name. The chat turn on PostgreSQL: the message INSERT; the lease's take, a WITH statement (the
# UPDATE ... RETURNING the unfinished delivery and the conversation's state, joined to the first
# page of pending messages), so no delivery, state or pending SELECT; the delivery's beginning
# UPDATE; the reply in one WITH statement (the delivery's fence, the reply INSERT and the answered
# UPDATE as data-modifying CTEs). Those four are durable, each one statement in autocommit: no
# transaction and no COMMIT round trip. Relaxed: the lease release UPDATE, and where a desk reaches
# the conversation the handoff signal INSERT (with no desk nothing reads signals: none is written).
# The Redis copy of the window is checked against the state the lease returned. Token usage is
# written behind (none here, see settings_for). A command's reply is a WITH statement as well. The
# take also returns the chat's facts (its handoff row and preferences, bot.storage.base.ChatFacts):
# no Redis GET or SELECT of them in the lease's first turn. A first turn adds the sender and
# conversation's upsert; its window is built with no read of messages (the state says no reply is
# there yet), a cold load's with one. A window rebuilt is kept (SET NX), then the turn's own SET.
Budget = tuple[dict[str, int], int, int, dict[str, int]]
SQLITE: dict[str, Budget] = {
    "first": ({"INSERT": 4, "UPDATE": 5, "SELECT": 1}, 5, 0, {}),
    "chat": ({"INSERT": 2, "UPDATE": 5, "SELECT": 1}, 5, 0, {}),
    "desk": ({"INSERT": 3, "UPDATE": 5, "SELECT": 1}, 6, 0, {}),
    "command": ({"INSERT": 2, "UPDATE": 5, "SELECT": 2}, 5, 0, {}),
    "cold": ({"INSERT": 4, "UPDATE": 5, "SELECT": 2}, 5, 0, {}),
}
# The rate limit: one script counts the message and marks it counted, so that a repeat or a
# retry of it is not counted again (its own commands run inside Redis: not round trips).
_RATE = {"evalsha": 1}
_CACHED_WINDOW = {"evalsha": 1, "get": 1, "set": 1}
_NEW_WINDOW = {"evalsha": 1, "get": 1, "set": 2}
POSTGRES: dict[str, Budget] = {
    "first": ({"WITH": 3, "INSERT": 1, "UPDATE": 2}, 0, 1, _NEW_WINDOW),
    "chat": ({"WITH": 2, "INSERT": 1, "UPDATE": 2}, 0, 1, _CACHED_WINDOW),
    "desk": ({"WITH": 2, "INSERT": 2, "UPDATE": 2}, 0, 2, _CACHED_WINDOW),
    "command": (
        {"WITH": 2, "INSERT": 1, "UPDATE": 2, "SELECT": 1},
        0,
        1,
        _RATE,
    ),
    "cold": ({"WITH": 3, "INSERT": 1, "UPDATE": 2, "SELECT": 1}, 0, 1, _NEW_WINDOW),
}


def as_budgets(found: dict[str, Counts]) -> dict[str, Budget]:
    return {name: (dict(c.sql), c.commits, c.relaxed, dict(c.redis)) for name, c in found.items()}


async def test_turns_on_sqlite_without_redis(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path}/p.db", None, "")
    found = await turns(settings, None)
    found["cold"] = await cold(settings, None)
    assert as_budgets(found) == SQLITE


@pytest.mark.postgres
async def test_turns_on_postgresql_with_redis(
    postgres_url: str, private_redis: PrivateRedis, redis: Redis
) -> None:
    await upgrade(postgres_url)
    settings = settings_for(postgres_url, private_redis.url, "budget")
    found = await turns(settings, redis)
    await redis.flushall()  # the new process finds nothing cached
    found["cold"] = await cold(settings, redis)
    assert as_budgets(found) == POSTGRES


async def test_a_preference_set_again_compiles_nothing(tmp_path: Path) -> None:
    """/lang and /autotranslate write preferences with an upsert: built with the dialects'
    on_conflict_do_update() it had no cache key and was compiled at every command."""
    settings = settings_for(f"sqlite+aiosqlite:///{tmp_path}/p.db", None, "")
    async with Parley(settings, backend=ScriptedBackend()) as app:
        await warm_up(app, "w1")
        first = [await measure(app, None, text, f"a{n}") for n, text in
                 enumerate(["/lang de", "/autotranslate fr"])]  # fmt: skip
        again = [await measure(app, None, text, f"b{n}") for n, text in
                 enumerate(["/lang en", "/autotranslate off"])]  # fmt: skip
    for earlier, later in zip(first, again, strict=True):
        assert compiled_again(earlier, later) == []
