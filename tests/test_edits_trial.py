"""A message its sender edits replaces its recorded text, and is never answered twice.

Telegram's edited_message was ignored, and Discord's message update not listened to: a
message edited before its turn ran was answered with its original text, so a secret the user
edited out (a pasted password) still reached the model and stayed in the history and the
cached context. Now a pending message is answered once, with its new text; one in a running
turn, or answered, keeps its answer and leaves the history and the context with its new
text, as a redaction does; an edit that comes before its message is recorded is marked and
taken as the message is. On SQLite and PostgreSQL, windows in process and in Redis.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from telegram import Update

from adapters.kit.actions import Edit, Ignore
from adapters.telegram.translate import BotIdentity, translate
from bot.app import Parley
from bot.types import ConversationKey, Role
from tests import discord_events as ev
from tests.adapter_harness import discord_harness, telegram_harness
from tests.doubles import ScriptedBackend
from tests.telegram_api import BOT
from tests.telegram_updates import message, person, telegram_stack
from tests.test_answer_deleted_in_chat import HeldAnswer, redis  # noqa: F401 (a fixture)

GROUP, ADA = -100779, 7
MENTION = "@parley_bot "
SECRET = "hunter2-secret"
WAIT_S = 10


def asked(update_id: int, text: str, **more: Any) -> dict[str, Any]:
    entities = [{"type": "mention", "offset": 0, "length": len(MENTION) - 1}]
    body = message(
        GROUP, MENTION + text, user_id=ADA, entities=entities,
        **{"from": person(ADA, "Ada")}, **more,
    )  # fmt: skip
    return {"update_id": update_id, "message": body}


def edited(update_id: int, original: dict[str, Any], text: str) -> dict[str, Any]:
    """The edited_message Telegram sends when `original`'s sender changes its text."""
    body = dict(original["message"])
    entities = [{"type": "mention", "offset": 0, "length": len(MENTION) - 1}]
    body.update(text=MENTION + text, entities=entities, edit_date=body["date"] + 5)
    return {"update_id": update_id, "edited_message": body}


async def feed(adapter: Any, payload: dict[str, Any]) -> None:
    await adapter.handle_update(Update.de_json(payload, adapter.bot))


def prompt_texts(backend: ScriptedBackend, index: int) -> list[str]:
    request = backend.requests[index]
    return [m.content for m in request.messages if m.role is not Role.SYSTEM]


async def history(app: Parley, key: ConversationKey) -> list[tuple[Role, str]]:
    conversation = await app.store.conversation_id(key)
    assert conversation is not None
    assert await app.store.pending(conversation, 10) == []
    return [(m.role, m.content) for m in await app.store.history(conversation, 20)]


async def test_telegram_edits_replace_the_text_of_pending_running_and_answered_messages(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    backend = HeldAnswer()
    async with telegram_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        first = asked(1, "what is new?")
        await feed(h.adapter, first)
        async with asyncio.timeout(WAIT_S):
            await h.api.wait_for_messages(GROUP, 1)  # its turn runs, held
        second = asked(2, f"log in with password {SECRET}")
        await feed(h.adapter, second)  # pending behind the running turn
        await feed(h.adapter, edited(3, second, "log in with my password"))
        await feed(h.adapter, edited(4, second, "log in with my password, please"))
        await feed(h.adapter, edited(5, first, f"what is new? ({SECRET})"))
        await feed(h.adapter, edited(6, first, "what is new today?"))
        backend.release.set()
        await h.idle()
        assert len(backend.requests) == 2  # each question answered once
        second_prompt = prompt_texts(backend, 1)
        assert not [t for t in second_prompt if SECRET in t or "what is new?" in t]
        assert second_prompt[-1] == "Ada: log in with my password, please"  # a group's label
        assert "Ada: what is new today?" in second_prompt
        await feed(h.adapter, asked(7, "and then?"))
        await h.idle()
        assert len(backend.requests) == 3
        assert not [t for t in prompt_texts(backend, 2) if SECRET in t]
        key = ConversationKey("telegram", str(GROUP))
        users = [text for role, text in await history(h.app, key) if role is Role.USER]
        assert users == ["what is new today?", "log in with my password, please", "and then?"]


async def test_a_telegram_edit_that_comes_before_its_message_is_taken_as_it_is_recorded(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        question = asked(1, f"my password is {SECRET}")
        await feed(h.adapter, edited(2, question, "my password is [removed]"))
        await feed(h.adapter, question)
        await h.idle()
        assert len(backend.requests) == 1
        assert prompt_texts(backend, 0)[-1] == "Ada: my password is [removed]"


async def test_telegram_edits_into_a_command_or_over_the_limit_leave_a_stub(
    tmp_path: Path, database_url: str
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        one, two = asked(1, f"first {SECRET}"), asked(2, f"second {SECRET}")
        await feed(h.adapter, one)
        await feed(h.adapter, two)
        await h.idle()
        answered = len(backend.requests)
        await feed(h.adapter, edited(3, one, "/reset"))
        await feed(h.adapter, edited(4, two, "x" * 100_000))
        await feed(h.adapter, edited(5, two, "nul\x00 inside"))  # never raises, kept storable
        await h.idle()
        assert len(backend.requests) == answered  # no /reset run, nothing answered again
        key = ConversationKey("telegram", str(GROUP))
        users = [text for role, text in await history(h.app, key) if role is Role.USER]
        assert not [t for t in users if SECRET in t or "\x00" in t]
        assert "edited into a command" in users[0]
        assert users[1].startswith("nul")


def test_edits_of_the_bots_own_messages_and_of_media_are_ignored() -> None:
    me = BotIdentity(BOT["id"], BOT["username"])
    ours = {**message(GROUP, "an answer"), "from": BOT, "edit_date": 1}
    assert isinstance(
        translate(Update.de_json({"update_id": 1, "edited_message": ours}, None), me), Ignore
    )
    chatter = {**message(GROUP, "hello all", user_id=ADA), "edit_date": 1}
    action = translate(Update.de_json({"update_id": 2, "edited_message": chatter}, None), me)
    assert isinstance(action, Edit) and action.observed  # kept only where the group keeps


async def test_discord_edits_replace_the_text_and_are_never_answered_again(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        question = ev.message_create(f"my password is {SECRET}")
        update = {**question, "content": "my password is [removed]",
                  "edited_timestamp": ev.EPOCH}  # fmt: skip
        h.api.push("MESSAGE_UPDATE", update)  # before its message: marked
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(1)
        h.api.push("MESSAGE_CREATE", question)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.handled(1)
            await h.idle()
        assert prompt_texts(backend, 0)[-1] == "my password is [removed]"
        again = {**update, "content": f"my password is {SECRET} after all"}
        unfurled = {**question, "edited_timestamp": None}  # an embed added: no edit
        h.api.push("MESSAGE_UPDATE", again)
        h.api.push("MESSAGE_UPDATE", unfurled)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(3)
            await h.idle()
        assert len(backend.requests) == 1
        key = ConversationKey("discord", str(ev.DM))
        assert (await history(h.app, key))[0] == (Role.USER, f"my password is {SECRET} after all")
        final = {**update, "content": "my password is [removed] for good"}
        h.api.push("MESSAGE_UPDATE", final)
        h.api.push("MESSAGE_CREATE", ev.message_create("and then?"))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(4)
            await h.adapter.handled(2)
            await h.idle()
        assert len(backend.requests) == 2
        assert not [t for t in prompt_texts(backend, 1) if SECRET in t]
        assert "my password is [removed] for good" in prompt_texts(backend, 1)


async def test_edits_have_a_rate_limit_of_their_own(tmp_path: Path) -> None:
    """A user fixing typos keeps every question within the limit; a flood of edits is cut to
    a stub that still takes the old text out."""
    backend = ScriptedBackend(lambda request: "Noted.")
    core = {"conversation": {"rate_limit_messages": 2, "rate_limit_window_s": 600}}
    async with telegram_stack(tmp_path, backend, core=core) as (app, adapter, _api):
        question = asked(1, f"first {SECRET}")
        await feed(adapter, question)
        await adapter.idle()
        await feed(adapter, edited(2, question, "first, fixed"))
        await feed(adapter, edited(3, question, "first, fixed"))  # the same edit again
        await feed(adapter, edited(4, question, "first, fixed twice"))
        key = ConversationKey("telegram", str(GROUP))
        users = [text for role, text in await history(app, key) if role is Role.USER]
        assert users == ["first, fixed twice"]
        await feed(adapter, edited(5, question, f"first {SECRET} again"))  # the third edit
        await feed(adapter, asked(6, "second question"))  # the second message: within
        await adapter.idle()
        assert len(backend.requests) == 2
        users = [text for role, text in await history(app, key) if role is Role.USER]
        assert "over the rate limit" in users[0] and SECRET not in users[0]
        assert users[1] == "second question"


async def test_a_discord_channel_question_edited_while_its_turn_runs_is_answered_once(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    backend = HeldAnswer()
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        question = ev.message_create(f"log in with {SECRET}", channel=ev.CHANNEL,
                                     mentions_bot=True)  # fmt: skip
        await h.deliver_event(question)
        async with asyncio.timeout(WAIT_S):
            await h.api.until(lambda: bool(h.api.messages[ev.CHANNEL]))
        (shown,) = h.api.messages[ev.CHANNEL]
        ours = {**ev.bot_message(ev.CHANNEL, "The first half, edited."), "id": str(shown),
                "edited_timestamp": ev.EPOCH, "guild_id": str(ev.GUILD)}  # fmt: skip
        chatter = {**ev.message_create("hello all", channel=ev.CHANNEL),
                   "edited_timestamp": ev.EPOCH}  # fmt: skip
        fixed = {**question, "content": f"<@{ev.BOT_ID}> log in with my password",
                 "edited_timestamp": ev.EPOCH}  # fmt: skip
        for update in (ours, chatter, fixed):
            h.api.push("MESSAGE_UPDATE", update)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(3)
        backend.release.set()
        await h.idle()
        assert len(backend.requests) == 1  # answered once, not again for the edit
        await h.deliver_event(ev.message_create("and then?", channel=ev.CHANNEL,
                                                mentions_bot=True))  # fmt: skip
        await h.idle()
        assert len(backend.requests) == 2
        turns = prompt_texts(backend, 1)
        assert not [t for t in turns if SECRET in t or "hello all" in t]
        assert [t for t in turns if t.endswith("log in with my password")]
        key = ConversationKey("discord", str(ev.CHANNEL))
        users = [text for role, text in await history(h.app, key) if role is Role.USER]
        assert users == ["log in with my password", "and then?"]


async def test_an_edit_mark_never_outlives_its_message_in_redis(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """The mark an edit leaves holds the new text, for a day: it is for a message not
    recorded yet. An edit whose message was recorded already with that text (Discord's
    update for an embed unfurled under a message edited before carries its edited_timestamp;
    Telegram's edit of the formatting only), or as something not edited (a command), left
    the text in Redis for a day all the same, after the user deleted the message too."""
    backend = ScriptedBackend(lambda request: "Noted.")
    settings = {"url": redis_url, "key_prefix": key_prefix}
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=settings) as h:
        question = ev.message_create("what is new?")
        h.api.push("MESSAGE_CREATE", question)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.handled(1)
            await h.idle()
        update = {**question, "content": f"my password is {SECRET}",
                  "edited_timestamp": ev.EPOCH}  # fmt: skip
        h.api.push("MESSAGE_UPDATE", update)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(1)
        h.api.push("MESSAGE_UPDATE", {**update, "embeds": []})  # an unfurl after the edit
        command = ev.message_create("/help")
        h.api.push("MESSAGE_CREATE", command)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(2)
            await h.adapter.handled(2)
            await h.idle()
        h.api.push("MESSAGE_UPDATE", {**command, "content": f"and {SECRET}",
                                      "edited_timestamp": ev.EPOCH})  # fmt: skip
        h.api.delete(ev.DM, int(question["id"]))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(3)
            await h.adapter.deleted(1)
            await h.idle()
    client = Redis.from_url(redis_url)
    try:
        names = [name async for name in client.scan_iter(match=f"{key_prefix}*")]
        kept = [await client.get(name) for name in names if await client.type(name) == b"string"]
    finally:
        await client.aclose()
    assert not [value for value in kept if value is not None and SECRET.encode() in value]


async def test_the_edit_mark_of_a_message_deleted_before_it_was_recorded_is_removed(
    tmp_path: Path, database_url: str, redis_url: str, key_prefix: str
) -> None:
    """A message edited and then deleted before it was recorded (its text still being
    counted): it is withdrawn as it is recorded, and the edit's mark, which holds the edited
    text, went unread, in Redis for a day after the user deleted the message."""
    backend = ScriptedBackend(lambda request: "Noted.")
    settings = {"url": redis_url, "key_prefix": key_prefix}
    async with discord_harness(tmp_path, backend, database_url=database_url, redis=settings) as h:
        question = ev.message_create("what is new?")
        update = {**question, "content": f"my password is {SECRET}",
                  "edited_timestamp": ev.EPOCH}  # fmt: skip
        h.api.push("MESSAGE_UPDATE", update)
        h.api.delete(ev.DM, int(question["id"]))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(1)
            await h.adapter.deleted(1)
        h.api.push("MESSAGE_CREATE", question)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.handled(1)
            await h.idle()
        assert backend.requests == []  # withdrawn, never answered
    client = Redis.from_url(redis_url)
    try:
        names = [name async for name in client.scan_iter(match=f"{key_prefix}*")]
        kept = [await client.get(name) for name in names if await client.type(name) == b"string"]
    finally:
        await client.aclose()
    assert not [value for value in kept if value is not None and SECRET.encode() in value]


async def test_edits_into_commands_count_against_the_edits_rate_limit(tmp_path: Path) -> None:
    """An edit into a command (or over the size limit) was not counted: a script flipping a
    message between commands edited it without end, each edit a tokenizer call and a write
    that raised the redaction count and dropped the cached window (and a summary folded from
    it), and it left the limit whole for the edits that followed."""
    backend = ScriptedBackend(lambda request: "Noted.")
    core = {"conversation": {"rate_limit_messages": 2, "rate_limit_window_s": 600}}
    async with telegram_stack(tmp_path, backend, core=core) as (app, adapter, _api):
        question = asked(1, "first question")
        await feed(adapter, question)
        await adapter.idle()
        for n, command in enumerate(["/a", "/bb", "/ccc"], start=2):
            await feed(adapter, edited(n, question, command))
        key = ConversationKey("telegram", str(GROUP))
        users = [text for role, text in await history(app, key) if role is Role.USER]
        assert "over the rate limit" in users[0]  # the third edit
        await feed(adapter, edited(5, question, f"first {SECRET}"))  # the fourth: over too
        users = [text for role, text in await history(app, key) if role is Role.USER]
        assert "over the rate limit" in users[0] and SECRET not in users[0]
        assert len(backend.requests) == 1
