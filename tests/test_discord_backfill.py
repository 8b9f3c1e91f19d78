"""Nothing lost on Discord: what was sent while the adapter was stopped or disconnected is read
back and answered once (the backfill), a message deleted before its turn is not answered, and
the shards of a sharded bot each get their own servers. Real discord.py against the local fake
of Discord (tests/discord_api.py); the store's two reads behind it on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("discord")
pytest.importorskip("websockets")

from adapters.discord import backfill
from adapters.discord.adapter import DiscordAdapter
from adapters.discord.settings import DiscordSettings
from adapters.kit.gate import Rate, Rates, RedisGate
from adapters.kit.runner import host_for
from backends.base import Chunk, GenerationRequest
from bot import phrases
from bot.app import Parley
from bot.storage.base import MessageKind, Store
from bot.storage.database import create_engine
from bot.storage.migrate import upgrade
from bot.storage.sql_store import DELETED_STUB, WITHDRAWN_STUB, SqlStore
from bot.types import ConversationKey, Incoming, Role, User, utcnow
from tests import discord_events as ev
from tests.adapter_harness import DiscordHarness, settings_for
from tests.discord_api import BOT_ID, TOKEN, FakeDiscordApi
from tests.doubles import ScriptedBackend

# Each wait is bounded: a dead connection fails the test, never hangs it. A new session after
# a reconnect waits discord.py's 5 s between two IDENTIFYs.
WAIT_S = 60


def fake_discord(*guilds: dict[str, Any], shards: int = 1) -> FakeDiscordApi:
    # Discord's 5 per 5 s, ten times faster on both sides: the same shape, quicker tests.
    return FakeDiscordApi(
        per_channel=(5, 0.5), guilds=list(guilds) or [ev.guild_create()], shard_count=shards
    )


@asynccontextmanager
async def started(
    tmp_path: Path,
    backend: object | None,
    api: FakeDiscordApi,
    *,
    redis: dict[str, str] | None = None,
    conversation: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[DiscordHarness]:
    """Parley with the Discord adapter (`sections`: its settings) connected to `api`, its
    history in `tmp_path` (the same folder again: the same database, as after a restart)."""
    rates = Rates(per_chat=Rate(5, 0.5), overall=Rate(50, 1.0))
    shards = len(sections.get("shard_ids") or range(sections.get("shard_count") or 1))
    identified = len(api.identified)
    async with api.serving():
        section_data = {"token": TOKEN, "stream_interval_s": 0.05, **sections}
        others: dict[str, Any] = {"redis": redis} if redis else {}
        if conversation:
            others["conversation"] = conversation
        settings = settings_for(tmp_path, "discord", discord=section_data, **others)
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            section = settings.section("discord")
            assert isinstance(section, DiscordSettings)
            adapter = DiscordAdapter(host_for(app), section, rates=rates, store=app.store)
            app.intake.register("discord", adapter, section.access)
            async with adapter:
                connection = asyncio.create_task(adapter.run())
                try:
                    harness = DiscordHarness(app, adapter, api)
                    yield harness
                    await harness.idle()
                    await every_shard_identified(api, identified + shards)
                finally:
                    connection.cancel()
                    await asyncio.gather(connection, return_exceptions=True)


async def every_shard_identified(api: FakeDiscordApi, count: int) -> None:
    """Before a stop: discord.py's `close()` reaches only the shards whose connection is
    made. A shard still waiting its turn to IDENTIFY (5 s after the one before), whose
    heartbeat thread started with Discord's HELLO, is left beating, into this test's event
    loop once it is closed."""
    async with asyncio.timeout(WAIT_S):
        await api.until(lambda: len(api.identified) >= count)


async def backfilled(h: DiscordHarness, count: int) -> None:
    async with asyncio.timeout(WAIT_S):
        await h.adapter.backfilled(count)
    await h.idle()


class HeldBackend(ScriptedBackend):
    """Answers `answer`; each turn waits for `release`, and `started` says one is waiting."""

    def __init__(self, answer: str) -> None:
        super().__init__(lambda request: answer)
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.started.set()
        await self.release.wait()
        async for chunk in super().stream(request):
            yield chunk


def asked(backend: ScriptedBackend) -> str:
    return "\n".join(str(request.messages[-1].content) for request in backend.requests)


async def answers_in(h: DiscordHarness, chat: int) -> list[str]:
    conversation = await h.app.store.conversation_id(ConversationKey("discord", str(chat)))
    if conversation is None:
        return []
    rows = await h.app.store.history(conversation, 100)
    return [r.content for r in rows if r.role is Role.ASSISTANT]


async def test_a_message_sent_while_stopped_is_answered_once_after_start(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord()
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("first"))
        await h.deliver_event(
            ev.message_create("first here", channel=ev.CHANNEL, mentions_bot=True)
        )
        await h.idle()
    # Parley is stopped: these reach Discord, and nothing delivers them to Parley.
    api.post(ev.message_create("are you there?"))
    api.post(ev.message_create("while you were away", channel=ev.CHANNEL, mentions_bot=True))
    api.post(ev.message_create("chatter, not for the bot", channel=ev.CHANNEL))
    async with started(tmp_path, backend, api) as h:
        await backfilled(h, 1)
        assert h.api.texts(ev.DM) == ["Answered.", "Answered."]
        assert h.api.texts(ev.CHANNEL) == ["Answered.", "Answered."]
        assert "are you there?" in asked(backend) and "while you were away" in asked(backend)
        assert "chatter" not in asked(backend)
        assert await answers_in(h, ev.DM) == ["Answered.", "Answered."]
    # A third start reads the same messages back: each is answered once, not again.
    async with started(tmp_path, backend, api) as h:
        await backfilled(h, 1)
        assert h.api.texts(ev.DM) == ["Answered.", "Answered."]
        assert len(backend.requests) == 4
        assert len(h.api.reads(ev.DM)) >= 2  # it did read the DM again, from the last one


async def test_a_turn_left_by_a_crash_replies_to_its_question_in_a_server(
    tmp_path: Path,
) -> None:
    """A message recorded and not answered (the process died in between) is answered after
    the restart without any message of that channel coming through this process: its answer
    went out without replying to the question, which in a busy channel says nothing of whom
    it answers (a helper's review). discord.py's cache of the servers knows the channel."""
    from bot.storage.base import MessageKind
    from bot.types import Incoming, User

    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord()
    question = ev.message_create("left by a crash", channel=ev.CHANNEL, mentions_bot=True)
    async with started(tmp_path, backend, api) as h:
        key = ConversationKey("discord", str(ev.CHANNEL))
        incoming = Incoming(
            key, User("discord", str(ev.USER), "u"), "left by a crash",
            idempotency_key=f"discord:{question['id']}", platform_message_id=question["id"],
            group=True,
        )  # fmt: skip
        await h.app.store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=3)
    async with started(tmp_path, backend, api) as h:
        async with asyncio.timeout(WAIT_S):
            await h.api.until(lambda: "Answered." in h.api.texts(ev.CHANNEL))
        await h.idle()
        (answer,) = [c for c in h.api.writes(ev.CHANNEL) if c.method == "POST"]
        assert str(answer.body["message_reference"]["message_id"]) == question["id"]


async def test_a_message_missed_while_stopped_is_answered_when_a_live_one_comes_first(
    tmp_path: Path,
) -> None:
    """A user asks while Parley is stopped and asks again as it comes back: the second
    message arrives live, right after READY, and is recorded before the backfill reads. The
    backfill read from the newest recorded message, the live one, and the first question was
    never answered (a helper's review). It reads from where the conversation stood before the
    gateway connected."""
    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord()
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("first"))
        await h.idle()
    api.post(ev.message_create("missed while you were down"))
    api.push("MESSAGE_CREATE", ev.message_create("hello? anyone?"))  # live, after READY
    async with started(tmp_path, backend, api) as h:
        async with asyncio.timeout(WAIT_S):
            await h.adapter.handled(1)
        await backfilled(h, 1)
        assert "missed while you were down" in asked(backend)
        assert "hello? anyone?" in asked(backend)
        assert await answers_in(h, ev.DM) == ["Answered."] * 3


async def test_a_message_missed_while_disconnected_is_answered_when_a_live_one_comes_first(
    tmp_path: Path,
) -> None:
    """The same after a connection that dropped and could not resume: the backfill starts
    where the conversation stood when the connection dropped."""
    backend = ScriptedBackend(lambda request: "Here.")
    api = fake_discord()
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("first"))
        await backfilled(h, 1)
        api.post(ev.message_create("sent while disconnected"))
        api.reconnect(resume=False)
        api.push("MESSAGE_CREATE", ev.message_create("live after the new session"))
        await backfilled(h, 2)
        assert "sent while disconnected" in asked(backend)
        assert "live after the new session" in asked(backend)
        assert h.api.texts(ev.DM) == ["Here."] * 3


async def test_chatter_read_back_costs_no_member_lookups(tmp_path: Path) -> None:
    """Each chatter message read back (not for the bot, /keep off) had its sender's member
    fetched, each fetch waiting for the server's read window: 40 messages, 40 lookups, and
    the DM questions behind that channel waited (a helper's review). Now chatter needs none
    (the access rules name no roles), and a sender is looked up once per backfill."""
    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord()
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("first", channel=ev.CHANNEL, mentions_bot=True))
        await h.idle()
    for n in range(40):
        api.post(ev.message_create(f"chatter {n}", channel=ev.CHANNEL))
    for n in range(3):
        api.post(ev.message_create(f"question {n}", channel=ev.CHANNEL, mentions_bot=True))
    async with started(tmp_path, backend, api) as h:
        await backfilled(h, 1)
        assert all(f"question {n}" in asked(backend) for n in range(3))
        lookups = [c for c in h.api.calls if "/members/" in c.path]
        assert len(lookups) == 1  # the one sender of the three questions


async def test_a_channel_discord_fails_to_give_once_stops_no_missed_question(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discord failing one read of a backfill (a 503, which discord.py raises at once, what
    comes with a Discord incident, the usual cause of the reconnect before it) ended the
    whole backfill where it was a channel's fetch (a DM's: the channels after it were not
    read until the next new session, if one came within backfill_hours), and where it was a
    page of a channel's log, that channel was skipped for good: its missed question stayed
    unanswered, and once a live message came there, no later backfill read back before it.
    A channel that failed is read again, after a pause, and the others go on."""
    monkeypatch.setattr(backfill, "RETRY_S", 0.01)
    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord()
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("first"))
        await h.deliver_event(
            ev.message_create("first here", channel=ev.CHANNEL, mentions_bot=True)
        )
        await h.idle()
    api.post(ev.message_create("missed in the DM"))
    api.post(ev.message_create("missed in the channel", channel=ev.CHANNEL, mentions_bot=True))
    api.failing_reads = 1  # the backfill's first read, whichever channel it is
    async with started(tmp_path, backend, api) as h:
        await backfilled(h, 1)
        assert api.failing_reads == 0
        assert "missed in the DM" in asked(backend)
        assert "missed in the channel" in asked(backend)
        assert h.api.texts(ev.DM) == ["Answered."] * 2
        assert h.api.texts(ev.CHANNEL) == ["Answered."] * 2


def threads_opened(api: FakeDiscordApi) -> list[str]:
    return [c.body["name"] for c in api.calls if c.path.endswith("/threads") and c.method == "POST"]


async def test_questions_read_back_again_do_not_count_towards_the_rate_limit(
    tmp_path: Path,
) -> None:
    """An auto_thread channel is read from `backfill_hours` ago at every start. Its questions,
    recorded already, were taken again and counted towards their senders' rate limit (the
    window that remembered them had passed): after a restart, an active user's next question
    was refused. A message recorded already is now left alone."""
    backend = ScriptedBackend(lambda request: "Here.")
    api = fake_discord()
    limit = {"rate_limit_messages": 2, "rate_limit_window_s": 60}
    threads = {"auto_thread": [ev.CHANNEL]}
    async with started(tmp_path, backend, api, conversation=limit, **threads) as h:
        for n in range(2):
            question = ev.message_create(f"question {n}", channel=ev.CHANNEL, mentions_bot=True)
            await h.deliver_event(question)
        await h.idle()
    async with started(tmp_path, backend, api, conversation=limit, **threads) as h:
        await backfilled(h, 1)
        question = ev.message_create("question 2", channel=ev.CHANNEL, mentions_bot=True)
        await h.deliver_event(question)
        await h.idle()
        assert threads_opened(api) == ["question 0", "question 1", "question 2"]
        assert len(backend.requests) == 3
        assert h.api.texts(int(question["id"])) == ["Here."]


async def test_a_busy_auto_thread_channel_is_read_back_to_the_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An auto_thread channel is read from `backfill_hours` ago at every start (its mentions
    are recorded in their threads, so no mark says where its gap began), oldest first: in a
    channel with more messages in those hours than the cap of pages (a busy support channel,
    500 in a day), every start read the same oldest ones and stopped at the cap, and a
    question asked while Parley was down, minutes ago, was never read. Such a channel is now
    read newest first, back to `backfill_hours` ago, within the same cap. The cap is 2 pages
    of 2 messages here (100 x 5 in the product)."""
    monkeypatch.setattr(backfill, "PAGE", 2)
    monkeypatch.setattr(backfill, "MAX_PAGES", 2)
    backend = ScriptedBackend(lambda request: "Here.")
    api = fake_discord()
    threads = {"auto_thread": [ev.CHANNEL]}
    async with started(tmp_path, backend, api, **threads) as h:
        await h.deliver_event(ev.message_create("first", channel=ev.CHANNEL, mentions_bot=True))
        for n in range(6):  # the channel's own talk, not for the bot
            await h.deliver_event(ev.message_create(f"chatter {n}", channel=ev.CHANNEL))
        await h.idle()
    missed = ev.message_create("asked while down", channel=ev.CHANNEL, mentions_bot=True)
    api.post(missed)
    async with started(tmp_path, backend, api, **threads) as h:
        await backfilled(h, 1)
        assert "asked while down" in asked(backend)
        assert threads_opened(api) == ["first", "asked while down"]
        assert h.api.texts(int(missed["id"])) == ["Here."]


async def test_a_resumed_drop_does_not_leave_old_marks_for_a_later_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marks read at a drop that then resumed stayed, unused, until the next new
    session, days later perhaps: its backfill read from them, oldest first, ran into the
    cap of pages, and never reached the gap (a helper's review). A resume drops them. The
    cap is 2 pages of 2 messages here (100 x 5 in the product)."""
    monkeypatch.setattr(backfill, "PAGE", 2)
    monkeypatch.setattr(backfill, "MAX_PAGES", 2)
    backend = ScriptedBackend(lambda request: "Here.")
    api = fake_discord()
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("first"))
        await backfilled(h, 1)
        api.reconnect(resume=True)
        for n in range(6):  # the conversation goes on, live, after the resume
            await h.deliver_event(ev.message_create(f"after the resume {n}"))
            await h.idle()
        assert len(api.resumed) == 1
        api.post(ev.message_create("sent while disconnected"))
        api.reconnect(resume=False)
        await backfilled(h, 2)
        assert "sent while disconnected" in asked(backend)


async def test_a_blocked_role_is_not_answered_when_backfill_cannot_read_its_roles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Live, a member with a blocked role is refused; read back after downtime, a failed
    member lookup gave the message no roles, and it was answered: a block list that failed
    open. Now such a message is not answered, with one log line."""
    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord()
    blocked = {"access": {"blocked_roles": [str(ev.MEMBER_ROLE)]}}
    async with started(tmp_path, backend, api, **blocked) as h:
        await h.deliver_event(ev.message_create(
            "hello", channel=ev.CHANNEL, mentions_bot=True, author=ev.ADMIN, roles=(ev.ADMIN_ROLE,)
        ))  # fmt: skip
        await h.idle()
    api.post(ev.message_create("let me in", channel=ev.CHANNEL, mentions_bot=True))
    del api.members[(ev.GUILD, ev.USER)]  # the lookup fails (here: 404 Unknown Member)
    async with started(tmp_path, backend, api, **blocked) as h:
        await backfilled(h, 1)
        assert "let me in" not in asked(backend)
        assert h.api.texts(ev.CHANNEL) == ["Answered."]
        assert "its sender's roles could not be read (404 10007)" in caplog.text


@pytest.mark.parametrize("where", [ev.DM, ev.CHANNEL])
async def test_a_refused_message_read_back_is_not_refused_again(tmp_path: Path, where: int) -> None:
    """A blocked sender's message is refused, and nothing records it: every backfill that
    read it back (each start, each new session, until a later message of the conversation
    was recorded) refused it again, the sentence replying to their old message. A message
    read back is refused without a word, as a photo read back gets no sentence."""
    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord()
    blocked = {"access": {"blocked_users": [str(ev.USER)]}}
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("hi", channel=where, mentions_bot=True))
        await h.idle()
    async with started(tmp_path, backend, api, **blocked) as h:
        await backfilled(h, 1)
        await h.deliver_event(ev.message_create("let me in", channel=where, mentions_bot=True))
        await h.idle()
        assert h.api.texts(where) == ["Answered.", phrases.NOT_ALLOWED]
    async with started(tmp_path, backend, api, **blocked) as h:
        await backfilled(h, 1)
        assert h.api.texts(where) == ["Answered.", phrases.NOT_ALLOWED]
        assert "let me in" not in asked(backend)


async def test_a_reconnect_that_is_not_a_resume_backfills(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda request: "Here.")
    api = fake_discord()
    async with started(tmp_path, backend, api) as h:
        await h.deliver_event(ev.message_create("first"))
        await backfilled(h, 1)  # the start's own
        # The connection drops and resumes: Discord replays what was missed, no backfill.
        api.reconnect(resume=True)
        await h.deliver_event(ev.message_create("after the resume"))
        await h.idle()
        assert len(api.resumed) == 1 and h.adapter.backfills_done == 1
        # It drops again and cannot resume: a new session (READY), and what was sent in
        # between is read back.
        api.post(ev.message_create("sent while disconnected"))
        api.reconnect(resume=False)
        await backfilled(h, 2)
        assert len(api.identified) == 2
        assert "sent while disconnected" in asked(backend)
        assert h.api.texts(ev.DM) == ["Here."] * 3


async def test_a_message_deleted_before_its_turn_is_not_answered(tmp_path: Path) -> None:
    backend = HeldBackend("Only the first.")
    async with started(tmp_path, backend, fake_discord()) as h:
        await h.deliver_event(ev.message_create("first"))
        async with asyncio.timeout(WAIT_S):
            await backend.started.wait()  # the first turn runs; the next message waits
        second = ev.message_create("second, deleted at once")
        await h.deliver_event(second)
        h.api.delete(ev.DM, int(second["id"]))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.deleted(1)
        backend.release.set()
        await h.idle()
        assert h.api.texts(ev.DM) == ["Only the first."]
        assert len(backend.requests) == 1 and "deleted" not in asked(backend)
        conversation = await h.app.store.conversation_id(ConversationKey("discord", str(ev.DM)))
        assert conversation is not None and await h.app.store.pending(conversation, 10) == []
        # A restart's backfill does not bring it back: it is gone from the channel, and its
        # record is settled.
    async with started(tmp_path, backend, h.api) as h:
        await backfilled(h, 1)
        assert h.api.texts(ev.DM) == ["Only the first."]


async def test_a_message_deleted_after_its_answer_leaves_the_context_and_history(
    tmp_path: Path,
) -> None:
    """A member pastes a secret, is answered, and deletes the message on Discord: its text
    stayed in every later prompt of the channel and in /history (a helper's review). It is
    now replaced by a stub in the history and the cached context is rebuilt without it."""
    backend = ScriptedBackend(lambda request: "Noted.")
    async with started(tmp_path, backend, fake_discord()) as h:
        secret = ev.message_create(
            "why does login fail? my token is sk-SECRET-123", channel=ev.CHANNEL, mentions_bot=True
        )
        await h.deliver_event(secret)
        await h.idle()
        h.api.delete(ev.CHANNEL, int(secret["id"]), ev.GUILD)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.deleted(1)
        later = ev.message_create("what was asked before?", channel=ev.CHANNEL, author=1003,
                                  mentions_bot=True)  # fmt: skip
        await h.deliver_event(later)
        await h.idle()
        prompt = [m.content for m in backend.requests[-1].messages]
        assert not [c for c in prompt if "sk-SECRET" in c]
        # The conversation reads on around it (a server channel's turn after its sender's name).
        assert f"User {ev.USER}: {DELETED_STUB}" in prompt
        conversation = await h.app.store.conversation_id(
            ConversationKey("discord", str(ev.CHANNEL))
        )
        assert conversation is not None
        history = [m.content for m in await h.app.store.history(conversation, 10)]
        assert DELETED_STUB in history and not [c for c in history if "sk-SECRET" in c]


async def test_two_shards_each_get_their_servers(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda request: "Sharded.")
    api = fake_discord(ev.guild_create(), ev.guild_create(ev.GUILD_2, ev.CHANNEL_2), shards=2)
    async with started(tmp_path, backend, api, shard_count=2) as h:
        await h.deliver_event(ev.message_create("one", channel=ev.CHANNEL, mentions_bot=True))
        second = ev.message_create("two", channel=ev.CHANNEL_2, guild=ev.GUILD_2, mentions_bot=True)
        await h.deliver_event(second)
        await h.idle()
        assert sorted(i["d"]["shard"] for i in api.identified) == [[0, 2], [1, 2]]
        assert h.api.texts(ev.CHANNEL) == ["Sharded."] and h.api.texts(ev.CHANNEL_2) == ["Sharded."]
        await backfilled(h, 2)  # one backfill per shard's session


async def test_a_process_of_three_shards_fetches_a_dm_channel_once_not_once_per_shard(
    tmp_path: Path,
) -> None:
    """Each shard's backfill fetched every conversation's channel outside the cache to learn
    its shard: a DM three times in a process of three shards (at 10,000 DMs, 30,000 of the
    bot's 50 requests a second at every start)."""
    backend = ScriptedBackend(lambda request: "Answered.")
    api = fake_discord(shards=3)
    async with started(tmp_path, backend, api, shard_count=3) as h:
        await h.deliver_event(ev.message_create("first"))
        await h.idle()
    api.post(ev.message_create("are you there?"))
    before = len(api.calls)
    async with started(tmp_path, backend, api, shard_count=3) as h:
        await backfilled(h, 3)
        assert h.api.texts(ev.DM) == ["Answered.", "Answered."]
        fetched = [
            c for c in api.calls[before:]
            if c.method == "GET" and c.path.endswith(f"/channels/{ev.DM}")
        ]  # fmt: skip
        assert len(fetched) == 1


async def test_a_session_ready_as_the_adapter_stops_starts_no_backfill(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """discord.py runs each event in a task of its own, and holds a session's ready event
    about 2 s for the guilds: one that ran as the adapter stopped (a stop just after a
    connect) started a backfill after `__aexit__` had cancelled them, against the closed
    client, logged as "backfill of shard 0 failed" with a traceback (Session is closed)."""
    backend = ScriptedBackend(lambda request: "Answered.")
    async with started(tmp_path, backend, fake_discord()) as h:
        await backfilled(h, 1)
    await h.adapter.on_ready()
    late = [t for t in asyncio.all_tasks() if t.get_name().startswith("discord backfill")]
    await asyncio.gather(*late, return_exceptions=True)
    assert h.adapter.backfills_done == 1
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_stop_just_after_a_session_began_leaves_discord_py_nothing_to_dispatch(
    tmp_path: Path,
) -> None:
    """discord.py holds a new session's on_ready until the servers' GUILD_CREATE stream ends
    (2 s), in a task of its own that `close()` leaves running: a stop within those 2 s had it
    dispatch on_ready into the closed client after it, where scheduling the event fails (an
    AttributeError in that task, "coroutine 'Client._run_event' was never awaited"), once
    for each test that stops and starts the bot again. The stop waits for that on_ready."""
    backend = ScriptedBackend(lambda request: "Answered.")
    async with started(tmp_path, backend, fake_discord()) as h:
        await h.deliver_event(ev.message_create("first"))  # after READY and GUILD_CREATE
        await h.idle()  # and stopped: well within the 2 s
    # What discord.py left running ends (a hang detector, not a timing) without an error.
    left = asyncio.all_tasks() - {asyncio.current_task()}
    async with asyncio.timeout(WAIT_S):
        ended = await asyncio.gather(*left, return_exceptions=True)
    assert not [repr(e) for e in ended if isinstance(e, Exception)]


async def test_a_process_runs_only_its_shard_ids(tmp_path: Path) -> None:
    api = fake_discord(ev.guild_create(), ev.guild_create(ev.GUILD_2, ev.CHANNEL_2), shards=2)
    backend = ScriptedBackend(lambda request: "Shard one.")
    async with started(tmp_path, backend, api, shard_count=2, shard_ids=[1]) as h:
        message = ev.message_create("hi", channel=ev.CHANNEL_2, guild=ev.GUILD_2, mentions_bot=True)
        await h.deliver_event(message)
        await h.idle()
        assert [i["d"]["shard"] for i in api.identified] == [[1, 2]]
        assert h.api.texts(ev.CHANNEL_2) == ["Shard one."]


# The store's reads behind the backfill and the withdrawal, on both databases ---------------

ASKER = User("discord", "1001", "Asker")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
    await upgrade(url)
    sql = SqlStore(create_engine(url))
    await sql.start()
    yield sql
    await sql.aclose()


def message(
    chat: str, message_id: str, *, hours_ago: float = 0, platform: str = "discord"
) -> Incoming:
    return Incoming(
        key=ConversationKey(platform, chat),
        user=ASKER,
        text=f"message {message_id}",
        idempotency_key=f"{platform}:{message_id}",
        sent_at=utcnow() - timedelta(hours=hours_ago),
        platform_message_id=message_id,
    )


async def test_the_newest_recorded_message_of_each_recent_conversation(store: Store) -> None:
    for incoming in [
        message("10", "100"),
        message("10", "105"),
        message("20", "200", hours_ago=30),  # quiet for longer than asked about
        message("30", "300", hours_ago=2),
        message("10", "1", platform="telegram"),
    ]:
        await store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=1)
    found = await store.last_platform_message_ids("discord", utcnow() - timedelta(hours=24))
    assert found == {
        ConversationKey("discord", "10"): "105",
        ConversationKey("discord", "30"): "300",
    }


async def test_which_idempotency_keys_are_recorded(store: Store) -> None:
    for incoming in [message("10", "100"), message("20", "200"), message("10", "7", platform="x")]:
        await store.record_incoming(incoming, kind=MessageKind.CHAT, token_count=1)
    asked = ["discord:100", "discord:101", "discord:200", "x:100", "discord:7"]
    assert await store.recorded(asked) == {"discord:100", "discord:200"}
    assert await store.recorded([]) == frozenset()
    many = [f"discord:{n}" for n in range(100, 200)]  # a backfill's page
    assert await store.recorded(many) == {"discord:100"}


async def test_withdraw_settles_a_pending_message_only(store: Store) -> None:
    key = ConversationKey("discord", "10")
    first = await store.record_incoming(message("10", "100"), kind=MessageKind.CHAT, token_count=1)
    await store.record_incoming(message("10", "101"), kind=MessageKind.CHAT, token_count=1)
    reply = await store.record_reply(
        first.conversation_id, [first.message_id], "answer", kind=MessageKind.CHAT, token_count=1
    )
    assert reply is not None
    assert not await store.withdraw(key, "100")  # answered already: stays as it is
    assert await store.withdraw(key, "101")
    assert not await store.withdraw(key, "101")  # once
    assert not await store.withdraw(ConversationKey("discord", "99"), "101")
    assert await store.pending(first.conversation_id, 10) == []
    shown = [(m.content, m.kind) for m in await store.history(first.conversation_id, 10)]
    assert (WITHDRAWN_STUB, MessageKind.COMMAND) in shown
    assert "message 101" not in [content for content, _ in shown]  # its text is gone
    # Out of the model's context: only the answered question and its answer are in it.
    context = await store.context_messages(first.conversation_id, 0, 10)
    assert [row.content for row in context] == ["message 100", "answer"]


async def test_redact_replaces_an_answered_message_only(store: Store) -> None:
    first = await store.record_incoming(message("10", "100"), kind=MessageKind.CHAT, token_count=1)
    await store.record_incoming(message("10", "101"), kind=MessageKind.CHAT, token_count=1)
    await store.record_reply(
        first.conversation_id, [first.message_id], "answer", kind=MessageKind.CHAT, token_count=1
    )
    assert await store.redact("discord:100") == first.conversation_id
    assert await store.redact("discord:100") is None  # once
    assert await store.redact("discord:101") is None  # pending: withdraw's, not redact's
    assert await store.redact("discord:999") is None
    context = await store.context_messages(first.conversation_id, 0, 10)
    assert [row.content for row in context] == [DELETED_STUB, "answer"]


@pytest.mark.redis
async def test_with_redis_every_process_of_the_bot_shares_one_gate(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    from redis.asyncio import Redis

    backend = ScriptedBackend(lambda request: "Counted in Redis.")
    redis = {"url": redis_url, "key_prefix": key_prefix}
    async with started(tmp_path, backend, fake_discord(), redis=redis) as h:
        assert isinstance(h.adapter.gate, RedisGate)
        await h.deliver_event(ev.message_create("hi"))
        await h.idle()
        assert h.api.texts(ev.DM) == ["Counted in Redis."]
        client = Redis.from_url(redis_url)
        try:
            # The bot's global window (and the channel's) in Redis, under the bot's own id:
            # what another process of the same bot counts against.
            prefix = f"{key_prefix}:discord:{BOT_ID}:gate"
            assert await client.zcard(f"{prefix}:overall:all") >= 1
            assert await client.zcard(f"{prefix}:chat:{ev.DM}") >= 1
        finally:
            await client.delete(*[k async for k in client.scan_iter(f"{key_prefix}:*")])
            await client.aclose()
