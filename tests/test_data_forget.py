"""`parley data forget --platform P --user ID [--yes]` (docs/cli.md, docs/security.md): an
operator forgets one chat user, on SQLite and PostgreSQL, with Redis and with a worker that
keeps its caches in process.

After it nothing of the user's text is in any table nor in any Redis key, the group chats they
wrote in keep the others' messages, a new user (on SQLite, one that would have been given the
forgotten ids) gets no trace of them, and a running worker serves none of it: on PostgreSQL it
notices by itself, on SQLite the command refuses while a worker has the database open.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from adapters.support.events import RedisEventLog
from bot.budget_counters import Limited, RedisCounter
from bot.cli import main
from bot.handoff.models import HandoffEventRow, HandoffStateRow
from bot.storage import keys, migrate
from bot.storage.base import Forgotten, MessageKind
from bot.storage.database import create_engine
from bot.storage.models import Base, ConversationRow, TokenUsageRow
from bot.storage.prefs_models import ChatPrefsRow, UserPrefsRow
from bot.storage.sql_store import FORGOTTEN_STUB, SqlStore
from bot.storage.usage import Subject, UsageLog
from bot.types import ConversationKey, Incoming, User
from tests.processes import parley_env
from tests.test_retention import Worker, backdate, backdate_all, last_prompt, stored_ids, worker

SECRET = "sk-FORGET-ME-7781"
NAME = "Ada Zqx"  # her display name: gone too
# The platform the retention tests' worker serves (tests/test_retention.py).
GROUP = ConversationKey("test", "-1001")
PRIVATE = ConversationKey("test", "12345")
ADA, BOB = User("test", "12345", NAME), User("test", "678", "Bob")
CAROL = User("test", "999", "Carol")
FORGET = ["data", "forget", "--platform", "test", "--user", "12345"]


def said(key: ConversationKey, user: User, text: str, n: str, **more: object) -> Incoming:
    return Incoming(key, user, text, idempotency_key=f"{key.chat_id}:{n}",
                    group=key == GROUP, **more)  # type: ignore[arg-type]  # fmt: skip


def prompt(w: Worker) -> str:
    """The newest chat request's history (the retention tests' model answers "Noted.")."""
    return "\n".join(last_prompt(w.backend))


async def seed(w: Worker) -> dict[str, int]:
    """Ada in her private chat and in a group with Bob; what quotes her there: the answers,
    a kept message, Bob's reply to her, a "what did I miss" answer, the summary, a handoff
    note; her preferences, token usage and an edit's mark in the cache."""
    m, store = w.manager, w.store
    await m.handle(said(GROUP, BOB, "hello all", "g0"))
    await m.handle(said(GROUP, ADA, f"team, the key is {SECRET}", "g1"))
    await m.handle(said(GROUP, BOB, "thanks, noted", "g2", reply_to_text=f"the key is {SECRET}"))
    # Her row and her chat's are the newest: SQLite would give their ids to the next ones.
    await m.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
    kept = await store.record_incoming(
        said(GROUP, ADA, f"also {SECRET}", "g3"), kind=MessageKind.OBSERVED, token_count=5
    )
    ask = await store.record_incoming(
        said(GROUP, BOB, "/missed", "g4"), kind=MessageKind.COMMAND, token_count=1
    )
    group, private = kept.conversation_id, await store.conversation_id(PRIVATE)
    assert private is not None
    assert await store.record_reply(group, [ask.message_id], f"{NAME} said {SECRET}",
                                    kind=MessageKind.DIGEST, token_count=5)  # fmt: skip
    await m.handle(said(GROUP, BOB, "what is for lunch?", "g5"))
    ada = (await store.turn_prefs(kept.message_id)).user_ref
    assert ada is not None
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(ConversationRow).where(ConversationRow.id == group)
                           .values(summary=f"{NAME} shared {SECRET}."))  # fmt: skip
        for cid in (group, private):
            await conn.execute(sa.insert(HandoffStateRow).values(
                conversation_id=cid, state="waiting", detail=f"{NAME}: {SECRET}"))  # fmt: skip
            await conn.execute(sa.insert(HandoffEventRow).values(
                conversation_id=cid, from_state="bot", to_state="waiting", reason="asked",
                detail=f"{NAME}: {SECRET}"))  # fmt: skip
        await conn.execute(sa.insert(UserPrefsRow).values(user_id=ada, language="de"))
        await conn.execute(sa.insert(TokenUsageRow).values(
            day=date(2026, 1, 2), scope="user", subject="test:12345", prompt_tokens=9))  # fmt: skip
    await w.cache.set(keys.edited("-1001:g1"), SECRET.encode(), 3600)
    return {"group": group, "private": private, "ada": ada}


async def table_rows(url: str) -> dict[str, list[str]]:
    """Every row of every table, as text."""
    engine = create_engine(url)
    found: dict[str, list[str]] = {}
    try:
        async with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                rows = (await conn.execute(sa.select(table))).all()
                found[table.name] = [repr(tuple(row)) for row in rows]
    finally:
        await engine.dispose()
    return found


def leaks(rows: dict[str, list[str]]) -> list[str]:
    return [f"{t}: {r}" for t, each in rows.items() for r in each if SECRET in r or NAME in r]


async def redis_values(redis_url: str, prefix: str) -> dict[str, str]:
    """Every key under `prefix` with its value, whatever its type."""
    client: Redis = Redis.from_url(redis_url)
    found: dict[str, str] = {}
    try:
        async for raw in client.scan_iter(match=f"{prefix}:*"):
            kind = (await client.type(raw)).decode()
            value: object
            if kind == "string":
                value = await client.get(raw)
            elif kind == "hash":
                value = await client.hgetall(raw)
            elif kind == "list":
                value = await client.lrange(raw, 0, -1)
            elif kind == "set":
                value = await client.smembers(raw)
            elif kind == "zset":
                value = await client.zrange(raw, 0, -1)
            else:
                value = await client.xrange(raw) if kind == "stream" else kind
            found[raw.decode()] = repr(value)
    finally:
        await client.aclose()
    return found


@pytest.fixture
def operator(
    database_url: str, redis_url: str, key_prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, str, str]:  # fmt: skip
    """`parley` commands run on `database_url` with Redis under `key_prefix`."""
    env = {"PARLEY_DATABASE__URL": database_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true",
           "PARLEY_REDIS__URL": redis_url, "PARLEY_REDIS__KEY_PREFIX": key_prefix}  # fmt: skip
    for name, value in parley_env(tmp_path, env).items():
        monkeypatch.setenv(name, value)
    return database_url, redis_url, key_prefix


def test_a_forgotten_user_leaves_no_text_in_sql_or_redis_and_no_trace_for_a_new_user(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, redis_url, prefix = operator

    async def before() -> dict[str, int]:
        async with worker(url, redis_url, prefix) as w:
            return await seed(w)

    ids = asyncio.run(before())
    assert leaks(asyncio.run(table_rows(url)))
    assert [k for k, v in asyncio.run(redis_values(redis_url, prefix)).items() if SECRET in v]

    assert main(FORGET) == 0  # a dry run: counts, deletes nothing
    out, err = capsys.readouterr()
    # Her 3 messages, the 2 answers to them, the digest and the /missed it answers (the
    # newest message of all, Bob's answer, stays whole).
    assert out.splitlines()[0].startswith("messages: 7 would be deleted") and err == ""
    assert out.splitlines()[-1] == "dry run: nothing was deleted; add --yes to delete"
    assert SECRET not in out and NAME not in out
    assert len(leaks(asyncio.run(table_rows(url)))) > 5

    assert main([*FORGET, "--yes"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("messages: 7 deleted") and err == ""
    assert out.splitlines()[-1].startswith("cache: ") and "dropped from Redis" in out
    rows = asyncio.run(table_rows(url))
    assert leaks(rows) == []
    assert [k for k, v in asyncio.run(redis_values(redis_url, prefix)).items()
            if SECRET in v or NAME in v] == []  # fmt: skip
    assert [r for r in rows["token_usage"] if "test:12345" in r] == []
    assert rows["user_prefs"] == []
    # Her own chat's handoff is gone; the group's stays, its note emptied.
    assert [r for r in rows["handoff_states"] if not r.startswith(f"({ids['group']}, ")] == []

    async def after() -> None:
        async with worker(url, redis_url, prefix) as w:
            # The group keeps Bob's words, not hers, nor what quoted her.
            group = await w.store.conversation_id(GROUP)
            assert group == ids["group"]
            texts = [m.content for m in await w.store.history(group, 50)]
            assert "thanks, noted" in texts and "what is for lunch?" in texts
            assert not [t for t in texts if SECRET in t]
            assert (await w.store.state(group)).summary == ""
            await w.manager.handle(said(GROUP, BOB, "and dessert?", "g6"))
            seen = prompt(w)
            assert "what is for lunch?" in seen and SECRET not in seen
            # A new user: new rows, none of hers (SQLite would give out her ids again).
            carol = await w.manager.handle(said(ConversationKey("test", "999"), CAROL,
                                                "hello", "c1"))  # fmt: skip
            assert carol.conversation_id not in (ids["group"], ids["private"])
            assert (await w.store.turn_prefs(carol.message_id)).user_ref != ids["ada"]
            assert SECRET not in prompt(w)
            # Ada herself, back: a new conversation, and none of her history.
            back = await w.manager.handle(said(PRIVATE, ADA, "hi again", "p2"))
            assert back.conversation_id not in (ids["private"], carol.conversation_id)
            assert prompt(w) == "hi again"

    asyncio.run(after())
    assert main([*FORGET, "--yes"]) == 0  # her new messages: a new forget finds them
    assert capsys.readouterr().out.startswith("messages: 2 deleted")
    rows = asyncio.run(table_rows(url))
    # The answer to her was the newest message of all: it stays as a stub, so that SQLite
    # does not give its id out again.
    assert [r for r in rows["messages"] if FORGOTTEN_STUB in r]
    assert leaks(rows) == [] and not [r for r in rows["messages"] if "hi again" in r]
    assert main(["data", "forget", "--platform", "test", "--user", "404"]) == 0
    assert "nothing to forget" in capsys.readouterr().out


async def test_a_running_worker_serves_nothing_of_a_forgotten_user(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A worker that keeps its caches in process (no Redis): its context windows and the
    ids it remembers. On SQLite the command refuses while the worker has the database open
    (one line, exit 3); on PostgreSQL the worker notices in its next turn."""
    env = {"PARLEY_DATABASE__URL": database_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true"}
    for name, value in parley_env(tmp_path, env).items():
        monkeypatch.setenv(name, value)
    sqlite = database_url.startswith("sqlite")
    async with worker(database_url, None, "") as w:
        await w.manager.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
        await w.manager.handle(said(GROUP, ADA, f"team, the key is {SECRET}", "g1"))
        await w.manager.handle(said(GROUP, BOB, "noted", "g2"))
        assert SECRET in prompt(w)  # in the window this worker keeps
        status = await asyncio.to_thread(main, [*FORGET, "--yes"])
        out, err = capsys.readouterr()
        if sqlite:
            assert status == 3 and out == ""
            assert err.count("\n") == 1 and "stop it" in err and SECRET not in err
            assert leaks(await table_rows(database_url))  # nothing was deleted
            return
        assert status == 0 and out.startswith("messages: 4 deleted"), out + err
        assert out.splitlines()[-1].startswith("cache: none shared")
        await w.manager.handle(said(GROUP, BOB, "what did she say?", "g3"))
        seen = prompt(w)
        assert "noted" in seen and SECRET not in seen
        back = await w.manager.handle(said(PRIVATE, ADA, "hi again", "p2"))
        assert prompt(w) == "hi again"
        async with w.store.engine.connect() as conn:  # recorded under a user found afresh
            user = await conn.scalar(sa.text("SELECT user_id FROM messages WHERE id = :id"),
                                     {"id": back.message_id})  # fmt: skip
            name = await conn.scalar(sa.text("SELECT external_id FROM users WHERE id = :id"),
                                     {"id": user})  # fmt: skip
        assert name == "12345"


def test_a_missing_argument_is_status_2_and_a_database_that_does_not_answer_status_3(
    operator_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["data", "forget", "--platform", "test"])
    assert exited.value.code == 2
    capsys.readouterr()
    monkeypatch.setenv("PARLEY_DATABASE__URL", "postgresql+asyncpg://parley@127.0.0.1:9/parley")
    monkeypatch.setenv("PARLEY_DATABASE__AUTO_MIGRATE", "false")
    for argv in (FORGET, [*FORGET, "--yes"]):
        assert main(argv) == 3
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("parley: error: ") and err.count("\n") == 1, err


async def refused_beside_a_worker(
    worker_url: str, operator_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The forget, run on `operator_url` while a worker has `worker_url` (the same file named
    otherwise) open, refuses: one line, exit 3."""
    env = {"PARLEY_DATABASE__URL": operator_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true"}
    for name, value in parley_env(tmp_path, env).items():
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["db", "upgrade"]) == 0
    capsys.readouterr()
    async with worker(worker_url, None, "") as w:
        await w.manager.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
        status = await asyncio.to_thread(main, [*FORGET, "--yes"])
        out, err = capsys.readouterr()
        assert status == 3 and out == "" and "stop it" in err, out + err


async def test_a_worker_on_an_sqlite_uri_url_is_seen_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An SQLite file named by a URI (`file:PATH?uri=true`, docs/database.md) is the same
    file: a worker on it holds the lock, and the command refuses while it runs."""
    uri = f"sqlite+aiosqlite:///file:{tmp_path}/parley.db?uri=true"
    path = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await refused_beside_a_worker(uri, path, tmp_path, monkeypatch, capsys)
    assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 0  # once it stopped
    assert capsys.readouterr().out.startswith("messages: 2 deleted")


def test_the_bots_answers_in_her_groups_that_may_quote_her_are_emptied(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The bot's answers to the others in a group she wrote in saw her messages in their
    context and may quote them ("what did Ada say?"): emptied to a stub; the others' messages
    and the answers given before her first message stay whole."""
    url, redis_url, prefix = operator

    async def before() -> None:
        async with worker(url, redis_url, prefix) as w:
            await w.manager.handle(said(GROUP, BOB, "hello all", "g0"))  # answered "Noted."
            await w.manager.handle(said(GROUP, ADA, f"the key is {SECRET}", "g1"))
            ask = await w.store.record_incoming(
                said(GROUP, BOB, "what did Ada say?", "g2"), kind=MessageKind.CHAT,
                token_count=4,
            )  # fmt: skip
            assert await w.store.record_reply(ask.conversation_id, [ask.message_id],
                                              f"She said the key is {SECRET}.",
                                              kind=MessageKind.CHAT, token_count=8)  # fmt: skip
            await w.manager.handle(said(GROUP, BOB, "thanks", "g3"))

    asyncio.run(before())
    assert main(FORGET) == 0
    assert "answers: 2 of the bot's in their group chats would be emptied" in (
        capsys.readouterr().out
    )
    assert main([*FORGET, "--yes"]) == 0
    out = capsys.readouterr().out
    messages = asyncio.run(table_rows(url))["messages"]
    assert leaks({"messages": messages}) == []
    assert "answers: 2 of the bot's in their group chats emptied" in out, out
    kept = "\n".join(messages)
    assert "hello all" in kept and "what did Ada say?" in kept and "thanks" in kept
    assert "Noted." in kept  # the answer to "hello all", before she wrote
    assert [r for r in messages if FORGOTTEN_STUB in r]


def test_her_budget_counters_in_redis_go_too(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared token budget's counters (bot.budget_counters) of her subject, today's and
    the days Redis still keeps: her usage, under her platform id; no key of Redis names her
    after the forget (SCAN)."""
    url, redis_url, prefix = operator
    mine = Limited(Subject("user", "test:12345"), 10_000)
    bobs = Limited(Subject("user", "test:678"), 10_000)
    today = datetime.now(UTC).date()

    async def before() -> None:
        async with worker(url, redis_url, prefix) as w:
            await w.manager.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
        client: Redis = Redis.from_url(redis_url)
        usage = UsageLog(create_engine(url))
        try:
            counter = RedisCounter(client, usage, key_prefix=prefix)
            for day, who in ((today, mine), (today - timedelta(days=1), mine), (today, bobs)):
                await counter.reserve(day, [who], f"r{day}", 50, force=False, now_s=time.time(),
                                      expires_s=time.time() + 60)  # fmt: skip
                await counter.settle(day, [who], [f"r{day}"], 42)
        finally:
            await usage.aclose()
            await client.aclose()

    asyncio.run(before())
    named = asyncio.run(redis_values(redis_url, prefix))
    assert [k for k in named if "test:12345" in k]
    assert main([*FORGET, "--yes"]) == 0
    capsys.readouterr()
    named = asyncio.run(redis_values(redis_url, prefix))
    assert [k for k in named if "test:12345" in k] == []
    assert [k for k in named if "user:test:678" in k]  # Bob's stay


async def test_an_answer_in_flight_in_her_group_is_not_recorded_after_the_forget(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A turn of the group running as the forget commits (PostgreSQL: workers keep running)
    loaded her words in its context; its answer, recorded after, may quote her, and a second
    forget finds no user to look for: the forget ends the group's delivery, as `erase` ends
    the visitor's, and the answer is not recorded (the question stays pending)."""
    if database_url.startswith("sqlite"):
        pytest.skip("on SQLite the command refuses while a worker runs")
    env = {"PARLEY_DATABASE__URL": database_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true"}
    for name, value in parley_env(tmp_path, env).items():
        monkeypatch.setenv(name, value)
    async with worker(database_url, None, "") as w:
        await w.manager.handle(said(GROUP, ADA, f"the key is {SECRET}", "g1"))
        ask = await w.store.record_incoming(
            said(GROUP, BOB, "what did Ada say?", "g2"), kind=MessageKind.CHAT, token_count=4
        )
        group = ask.conversation_id
        async with w.store.turn_lease(group, "w-test", ttl_s=30, wait_s=5) as lease:
            assert await w.store.begin_delivery(lease, group, ask.message_id, ask.message_id)
            assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 0
            late = await w.store.record_reply(group, [ask.message_id], f"She said {SECRET}.",
                                              kind=MessageKind.CHAT, token_count=5,
                                              epoch=lease.epoch)  # fmt: skip
        assert late is None
        assert [m.id for m in await w.store.pending(group, 10)] == [ask.message_id]
    capsys.readouterr()
    assert leaks(await table_rows(database_url)) == []


async def test_a_redis_that_does_not_answer_stops_the_forget_before_it_deletes(
    database_url: str, redis_url: str, key_prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Redis is asked first: were the SQL rows deleted before Redis failed, a second run would
    find no user to look for, and the keys of her conversations would stay."""
    env = {"PARLEY_DATABASE__URL": database_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true",
           "PARLEY_REDIS__URL": "redis://127.0.0.1:9/0",
           "PARLEY_REDIS__KEY_PREFIX": key_prefix}  # fmt: skip
    for name, value in parley_env(tmp_path, env).items():
        monkeypatch.setenv(name, value)
    async with worker(database_url, redis_url, key_prefix) as w:
        await w.manager.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
    assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("parley: error: ") and err.count("\n") == 1, out + err
    assert leaks(await table_rows(database_url))  # nothing deleted: it can be run again
    monkeypatch.setenv("PARLEY_REDIS__URL", redis_url)
    assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 0
    assert capsys.readouterr().out.startswith("messages: 2 deleted")
    assert leaks(await table_rows(database_url)) == []
    assert [k for k, v in (await redis_values(redis_url, key_prefix)).items() if SECRET in v] == []


def test_a_group_handed_off_to_a_person_stays_with_them(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The group's handoff (a person answers it now) is the group's, not hers: its state,
    agent and audit trail stay; only their notes, which may quote her, are emptied."""
    url, redis_url, prefix = operator

    async def before() -> int:
        async with worker(url, redis_url, prefix) as w:
            await w.manager.handle(said(GROUP, BOB, "hello all", "g0"))
            await w.manager.handle(said(GROUP, ADA, f"the key is {SECRET}", "g1"))
            group = await w.store.conversation_id(GROUP)
            assert group is not None
            async with w.store.engine.begin() as conn:
                await conn.execute(sa.insert(HandoffStateRow).values(
                    conversation_id=group, state="human", agent="Eve",
                    detail=f"{NAME}: {SECRET}"))  # fmt: skip
                await conn.execute(sa.insert(HandoffEventRow).values(
                    conversation_id=group, from_state="bot", to_state="human", reason="asked",
                    agent="Eve", detail=f"{NAME}: {SECRET}"))  # fmt: skip
            return group

    group = asyncio.run(before())
    assert main([*FORGET, "--yes"]) == 0
    capsys.readouterr()
    rows = asyncio.run(table_rows(url))
    assert leaks(rows) == []
    states = [r for r in rows["handoff_states"] if r.startswith(f"({group}, ")]
    assert len(states) == 1 and "'human'" in states[0] and "'Eve'" in states[0], rows
    assert len(rows["handoff_events"]) == 1 and "'Eve'" in rows["handoff_events"][0]


def test_her_stop_marks_in_redis_go_too(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A member's /stop in a group leaves a mark under their bare id for the worker running
    the turn (ConversationManager, `keys.stop(conversation, user_id)`): dropped with her."""
    url, redis_url, prefix = operator

    async def before() -> None:
        async with worker(url, redis_url, prefix) as w:
            await w.manager.handle(said(GROUP, ADA, f"the key is {SECRET}", "g1"))
            group = await w.store.conversation_id(GROUP)
            assert group is not None
            await w.cache.set(keys.stop(group, ADA.user_id), b"99", 60)

    asyncio.run(before())
    assert [k for k in asyncio.run(redis_values(redis_url, prefix)) if ":stop:" in k]
    assert main([*FORGET, "--yes"]) == 0
    capsys.readouterr()
    assert [k for k in asyncio.run(redis_values(redis_url, prefix)) if ":stop:" in k] == []


async def test_a_worker_on_a_link_to_the_file_is_seen_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker that opens the database through a symbolic link to the file locks the file
    itself: the command on the file's own path refuses while it runs."""
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "parley.db"
    (tmp_path / "parley.db").symlink_to(real)
    link = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await refused_beside_a_worker(link, f"sqlite+aiosqlite:///{real}", tmp_path, monkeypatch,
                                  capsys)  # fmt: skip


def test_a_support_visitor_forgotten_by_the_operator_leaves_no_event_log(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A web chat visitor (platform support, id SITE:VISITOR) the operator forgets (one who
    asked by mail): the event log its streams replay (adapters.support.events) holds their
    messages and the answers; it goes as with DELETE /v1/visitor."""
    url, redis_url, prefix = operator
    visitor = "shop:v_ada"
    key = ConversationKey("support", visitor)

    async def before() -> None:
        async with worker(url, redis_url, prefix) as w:
            await w.store.record_incoming(
                Incoming(key, User("support", visitor, ""), f"my key is {SECRET}",
                         idempotency_key="s1"), kind=MessageKind.CHAT, token_count=5,
            )  # fmt: skip
        client: Redis = Redis.from_url(redis_url)
        try:
            log = RedisEventLog(client, prefix, kept=50, ttl_s=3600)
            await log.append(visitor, [("message", {"text": f"my key is {SECRET}"})])
            await log.append(visitor, [("answer", {"text": f"Noted {SECRET}"})], once="a1")
        finally:
            await client.aclose()

    asyncio.run(before())
    assert [k for k, v in asyncio.run(redis_values(redis_url, prefix)).items() if SECRET in v]
    assert main(["data", "forget", "--platform", "support", "--user", visitor, "--yes"]) == 0
    capsys.readouterr()
    assert leaks(asyncio.run(table_rows(url))) == []
    named = asyncio.run(redis_values(redis_url, prefix))
    assert [k for k, v in named.items() if SECRET in v or visitor in k] == []


def test_her_private_chat_goes_even_with_no_message_of_hers_left(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Her private chat (its id is hers: Telegram's, a web chat visitor's) whose messages the
    retention policy already pruned keeps its row, named by her id, and its settings (her
    auto-translate language): it is hers all the same, closed as the others."""
    url, redis_url, prefix = operator

    async def before() -> None:
        async with worker(url, redis_url, prefix) as w:
            await w.manager.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
            await backdate_all(w, 40)
            await w.manager.handle(said(ConversationKey("test", "678"), BOB, "hi", "b1"))
            private = await w.store.conversation_id(PRIVATE)
            async with w.store.engine.begin() as conn:
                await conn.execute(sa.insert(ChatPrefsRow).values(
                    conversation_id=private, auto_translate="de"))  # fmt: skip

    asyncio.run(before())
    assert main(["db", "prune", "--older-than", "30"]) == 0
    capsys.readouterr()
    rows = asyncio.run(table_rows(url))
    assert not [r for r in rows["messages"] if SECRET in r]  # pruned
    assert [r for r in rows["conversations"] if "'12345'" in r]
    assert main([*FORGET, "--yes"]) == 0
    capsys.readouterr()
    rows = asyncio.run(table_rows(url))
    assert [r for r in rows["conversations"] if "'12345'" in r] == [], rows["conversations"]
    assert leaks(rows) == []
    assert rows["chat_prefs"] == []
    assert [r for r in rows["conversations"] if "'678'" in r]  # Bob's stays


def test_a_database_file_that_is_not_there_is_said_not_made(
    operator_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A typo in the SQLite path made a new, empty database and said "nothing to forget"
    (exit 0): the operator would take the user for forgotten. One line, exit 3, no file."""
    missing = tmp_path / "typo" / "parley.db"
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{missing}")
    for argv in (FORGET, [*FORGET, "--yes"]):
        assert main(argv) == 3
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and str(missing) in err, out + err
    assert not missing.exists() and not missing.parent.exists()


def as_acl_user(redis_url: str, user: str, password: str) -> str:
    """The test Redis's URL, logged in as the ACL user `user`."""
    target = urlsplit(redis_url)
    return f"redis://{user}:{password}@{target.hostname}:{target.port or 6379}{target.path}"


async def test_a_redis_key_that_fails_to_go_fails_the_forget_and_a_rerun_finishes_it(
    database_url: str, redis_url: str, key_prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Redis refuses to delete some of her keys (here an ACL user that may not touch her
    context window, "ctx:..."): the run says so in one line, exit 3, not "dropped", and a
    second run, Redis whole again, still finds what to delete and leaves nothing of hers."""
    async with worker(database_url, redis_url, key_prefix) as w:
        await w.manager.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
    held = [k for k, v in (await redis_values(redis_url, key_prefix)).items() if SECRET in v]
    assert any(k.startswith(f"{key_prefix}:c") for k in held), held  # what the ACL keeps
    admin: Redis = Redis.from_url(redis_url)
    user, password = key_prefix, secrets.token_hex(8)
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"],
                            keys=[f"{key_prefix}:[^c]*"], commands=["+@all"])  # fmt: skip
    limited = as_acl_user(redis_url, user, password)
    env = {"PARLEY_DATABASE__URL": database_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true",
           "PARLEY_REDIS__URL": limited, "PARLEY_REDIS__KEY_PREFIX": key_prefix}  # fmt: skip
    try:
        for name, value in parley_env(tmp_path, env).items():
            monkeypatch.setenv(name, value)
        assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 3
        out, err = capsys.readouterr()
        assert "dropped" not in out and err.startswith("parley: error: "), out + err
        assert err.count("\n") == 1 and SECRET not in err
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()
    monkeypatch.setenv("PARLEY_REDIS__URL", redis_url)
    assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("messages: 2 deleted") and "dropped from Redis" in out
    assert leaks(await table_rows(database_url)) == []
    assert [k for k, v in (await redis_values(redis_url, key_prefix)).items() if SECRET in v] == []


async def test_redis_failing_after_the_rows_went_leaves_a_rerun_that_finishes(
    database_url: str, redis_url: str, key_prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A worker caches her context window again while her rows go, and Redis then refuses
    its key (the ACL user loses it): the run exits 3, and a rerun, which finds no user of
    that id in SQL any more, still drops the keys the first run could not (kept in the data
    folder), and the file with them goes."""
    async with worker(database_url, redis_url, key_prefix) as w:
        await w.manager.handle(said(PRIVATE, ADA, f"my key is {SECRET}", "p1"))
    held = [k for k, v in (await redis_values(redis_url, key_prefix)).items() if SECRET in v]
    assert any(k.startswith(f"{key_prefix}:c") for k in held), held  # what the ACL keeps
    admin = SyncRedis.from_url(redis_url)
    user, password = key_prefix, secrets.token_hex(8)
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"],
                      keys=[f"{key_prefix}:*"], commands=["+@all"])  # fmt: skip
    copies = {k: admin.dump(k) for k in held if k.startswith(f"{key_prefix}:c")}
    forget_user = SqlStore.forget_user

    async def then_redis_refuses(store: SqlStore, *a: Any, apply: bool) -> Forgotten:
        done = await forget_user(store, *a, apply=apply)
        if apply:  # her rows are gone; a worker cached her window again meanwhile, and it
            # may no longer be deleted
            for name, dumped in copies.items():
                admin.restore(name, 0, dumped, replace=True)
            admin.acl_setuser(user, enabled=True, reset_keys=True, keys=[f"{key_prefix}:[^c]*"])
        return done

    limited = as_acl_user(redis_url, user, password)
    env = {"PARLEY_DATABASE__URL": database_url, "PARLEY_DATABASE__AUTO_MIGRATE": "true",
           "PARLEY_REDIS__URL": limited, "PARLEY_REDIS__KEY_PREFIX": key_prefix}  # fmt: skip
    try:
        for name, value in parley_env(tmp_path, env).items():
            monkeypatch.setenv(name, value)
        with monkeypatch.context() as patched:
            patched.setattr(SqlStore, "forget_user", then_redis_refuses)
            assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 3
        out, err = capsys.readouterr()
        assert out.startswith("messages: 2 deleted") and "dropped" not in out, out
        assert err.startswith("parley: error: ") and err.count("\n") == 1 and SECRET not in err
        assert [k for k, v in (await redis_values(redis_url, key_prefix)).items()
                if SECRET in v]  # fmt: skip
        # The keys kept for the rerun name neither her id nor her chat, and only the
        # operator may read them.
        (kept,) = (tmp_path / "home").glob("forget-pending/*")
        assert PRIVATE.chat_id not in kept.read_text() and ADA.user_id not in kept.read_text()
        assert kept.stat().st_mode & 0o077 == 0, oct(kept.stat().st_mode)
    finally:
        admin.acl_deluser(user)
        admin.close()
    monkeypatch.setenv("PARLEY_REDIS__URL", redis_url)
    # Another deployment (its own key prefix, its Redis) sharing the data folder: the file is
    # not its own, so it neither claims those keys dropped nor takes the file away.
    monkeypatch.setenv("PARLEY_REDIS__KEY_PREFIX", f"{key_prefix}-other")
    assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 0
    assert "nothing to forget" in capsys.readouterr().out
    assert len(list((tmp_path / "home").glob("forget-pending/*"))) == 1
    monkeypatch.setenv("PARLEY_REDIS__KEY_PREFIX", key_prefix)
    assert await asyncio.to_thread(main, FORGET) == 0  # a dry run tells of what is left
    out = capsys.readouterr().out
    assert "nothing to forget" not in out and "--yes" in out, out
    assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "dropped from Redis" in out, out
    assert leaks(await table_rows(database_url)) == []
    assert [k for k, v in (await redis_values(redis_url, key_prefix)).items() if SECRET in v] == []
    assert list((tmp_path / "home").glob("forget-pending/*")) == []
    assert await asyncio.to_thread(main, [*FORGET, "--yes"]) == 0  # done: nothing left
    assert "nothing to forget" in capsys.readouterr().out


def test_a_discord_dm_pruned_bare_is_said_to_be_out_of_reach(
    operator: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A Discord direct message's id is its channel's, not the user's: once the retention
    policy pruned every message in it nothing names it as theirs, and the forget passed over
    it in silence (the docs said their private chat goes "even with all its messages
    pruned"). It says what it cannot find; a Telegram user's private chat it finds."""
    url, _, _ = operator
    dm, group = ConversationKey("discord", "880001"), ConversationKey("discord", "770001")
    ada = User("discord", "4711", NAME)

    async def before() -> None:
        await migrate.upgrade(url)
        store = SqlStore(create_engine(url))
        try:
            for key, n in ((dm, "d1"), (group, "g1")):
                said = Incoming(key, ada, f"my key is {SECRET}", idempotency_key=n,
                                group=key == group)  # fmt: skip
                await store.record_incoming(said, kind=MessageKind.OBSERVED, token_count=5)
            await backdate(store, sorted(await stored_ids(store))[:1], 40)  # the DM's
            bob = User("telegram", "1", "Bob")
            said = Incoming(ConversationKey("telegram", "1"), bob, "hi", idempotency_key="t1")
            await store.record_incoming(said, kind=MessageKind.OBSERVED, token_count=1)
        finally:
            await store.engine.dispose()

    asyncio.run(before())
    assert main(["db", "prune", "--older-than", "30"]) == 0
    capsys.readouterr()
    assert main(["data", "forget", "--platform", "discord", "--user", "4711", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "conversations: 0 of their own deleted, 1 shared ones kept" in out, out
    assert (
        "not found: a group chat, or a private chat (discord names it by its own id, not "
        "theirs), with no message of theirs left in it (all pruned): nothing there names them"
    ) in out.splitlines()
    assert main([*FORGET[:3], "telegram", "--user", "1"]) == 0
    assert "not found: a group chat with no message" in capsys.readouterr().out
