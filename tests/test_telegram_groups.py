"""Groups that keep their messages for "what did I miss", admin-only group settings, answers
threaded to the question, notices and errors in the user's language, and polling that
confirms an update to Telegram only once it is recorded."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from telegram import AcceptedGiftTypes, Chat, ChatFullInfo
from telegram.error import ChatMigrated

from adapters.telegram.moves import RECHECK_S, FormerChats
from backends.base import GenerationRequest
from bot import phrases
from bot.errors import BackendTimeout
from bot.storage.base import MessageKind
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.telegram_updates import (
    bot_message,
    feed,
    mention_update,
    message,
    telegram_stack,
    text_update,
    update,
)

FAST: dict[str, Any] = {"stream_interval_s": 0.05}
GROUP = -100777
ADA, BOB, ADMIN = 7, 8, 9


async def _kinds(app: Any) -> list[tuple[str, str]]:
    engine = app.store.engine
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT kind, content FROM messages ORDER BY id")).all()
    return [(r[0], r[1]) for r in rows]


async def test_group_keeps_chatter_only_after_an_admin_opts_in(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, None, **FAST) as (app, adapter, api):
        api.admins.add((GROUP, ADMIN))
        await feed(adapter, text_update(1, GROUP, "/help", user_id=ADA))
        await adapter.idle()
        await feed(adapter, text_update(2, GROUP, "before opting in", user_id=ADA))
        await feed(adapter, text_update(3, GROUP, "/keep on", user_id=BOB))  # not an admin
        await adapter.idle()
        assert api.texts(GROUP)[-1] == phrases.ADMINS_ONLY
        await feed(adapter, text_update(4, GROUP, "/keep on", user_id=ADMIN))
        await adapter.idle()
        assert "now kept" in api.texts(GROUP)[-1]
        answered = len(api.texts(GROUP))
        friday = "Friday works; I will tell the team."
        now = int(time.time())  # "what did I miss" looks at the last hours
        release = "The release moves to Friday."
        await feed(adapter, text_update(5, GROUP, release, user_id=BOB, date=now))
        delivered_twice = text_update(6, GROUP, friday, user_id=ADA, date=now)
        await feed(adapter, delivered_twice)
        await feed(adapter, delivered_twice)
        await adapter.idle()
        assert len(api.texts(GROUP)) == answered  # kept, never answered

        kinds = await _kinds(app)
        observed = [c for k, c in kinds if k == MessageKind.OBSERVED]
        assert observed == ["The release moves to Friday.", friday]
        assert "before opting in" not in [c for _, c in kinds]
        assert not await app.store.pending(1, 10)
        history = [m.content for m in await app.store.history(1, 50)]
        assert "The release moves to Friday." not in history  # /history is the bot's talk

        await feed(adapter, text_update(7, GROUP, "/summarize missed 5h", user_id=ADMIN, date=now))
        await adapter.idle()
        summary = api.texts(GROUP)[-1]
        assert "Friday" in summary  # the extractive summary (no model) of the kept chatter

        await feed(adapter, text_update(8, GROUP, "/keep delete", user_id=ADA))  # not an admin
        await adapter.idle()
        assert api.texts(GROUP)[-1] == phrases.ADMINS_ONLY
        await feed(adapter, text_update(9, GROUP, "/keep delete", user_id=ADMIN))
        await adapter.idle()
        assert "Deleted 2" in api.texts(GROUP)[-1]
        left = await _kinds(app)
        assert not [k for k, _ in left if k == MessageKind.OBSERVED]
        # The summary quoted the kept chatter word for word: it goes with it, and so does
        # the request it answered; the chat's other commands and answers stay.
        assert not [c for _, c in left if "Friday" in c]
        assert "/summarize missed 5h" not in [c for _, c in left]
        assert "/keep on" in [c for _, c in left]
        await feed(adapter, text_update(10, GROUP, "after deleting", user_id=BOB))
        await adapter.idle()
        assert "after deleting" not in [c for _, c in await _kinds(app)]


async def test_configured_admins_need_no_telegram_rights(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, None, access={"admins": [ADA]}, **FAST) as (
        _,
        adapter,
        api,
    ):
        await feed(adapter, text_update(1, GROUP, "/keep on", user_id=ADA))
        await feed(adapter, text_update(2, GROUP, "/keep", user_id=BOB))  # asking is for all
        await adapter.idle()
        assert "now kept" in api.texts(GROUP)[0]
        assert "is on" in api.texts(GROUP)[1]
        assert not api.sent("getChatMember")


async def test_group_answers_quote_the_question_private_ones_do_not(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        asked = mention_update(1, GROUP, "@parley_bot what is new?", user_id=ADA)
        await feed(adapter, asked)
        await feed(adapter, text_update(2, 42, "hello"))
        await adapter.idle()
        (group_answer,) = api.sent("sendMessage", GROUP)
        quoted = json.loads(group_answer.params["reply_parameters"])
        assert quoted["message_id"] == asked["message"]["message_id"]
        assert quoted["allow_sending_without_reply"] is True
        private = api.sent("sendMessage", 42)
        assert private and all("reply_parameters" not in c.params for c in private)
        stored = await app.store.history(1, 10)
        assert stored[0].platform_message_id == str(asked["message"]["message_id"])


async def test_an_answer_under_way_as_the_group_becomes_a_supergroup_is_shown_there(
    tmp_path: Path,
) -> None:
    """A basic group upgraded to a supergroup (an admin makes it public, turns topics on)
    gets a new chat id, and Telegram refuses every call to the old one (400, with
    migrate_to_chat_id). The answer being written then, and the answers to the questions
    asked before the upgrade, were never shown: the refusal ended the showing, and the turn
    was recorded as answered."""
    old, new = -4567, -1004567
    backend = ScriptedBackend(lambda r: "one two three four five six", delay=lambda: 0.3)
    async with telegram_stack(tmp_path, backend, **FAST) as (_, adapter, api):
        for update_id, words in ((1, "count"), (2, "again")):
            asked = mention_update(update_id, old, f"@parley_bot {words}", user_id=ADA)
            asked["message"]["chat"] = {"id": old, "type": "group", "title": "Team"}
            await feed(adapter, asked)
            if update_id == 1:
                async with asyncio.timeout(60):
                    await api.until(lambda: bool(api.sent("sendMessage", old)))
                api.migrated[old] = new  # mid-answer: its message is in the old group
        await adapter.idle()
        assert api.texts(new) == ["one two three four five six"] * 2
        # The old group's message ids mean nothing in the supergroup: nothing quoted there.
        assert all("reply_parameters" not in c.params for c in api.sent("sendMessage", new))


async def test_a_group_that_becomes_a_supergroup_keeps_its_conversation(tmp_path: Path) -> None:
    """Upgraded to a supergroup, a group has a new chat id: it was a new conversation, so
    the bot forgot everything said before, and the group's settings were lost without a
    word (/keep on: nothing kept any more; what was kept could no longer be deleted with
    /keep delete, the old group being gone). Telegram says so in both chats (a service
    message with migrate_to_chat_id in the old one, migrate_from_chat_id in the new one)."""
    old, new = -4567, -1004567
    basic = {"id": old, "type": "group", "title": "Team"}
    backend = ScriptedBackend()
    async with telegram_stack(tmp_path, backend, **FAST) as (app, adapter, api):
        api.admins.update({(old, ADMIN), (new, ADMIN)})
        asked = mention_update(1, old, "@parley_bot the word is banana", user_id=ADA)
        asked["message"]["chat"] = basic
        keep = text_update(2, old, "/keep on", user_id=ADMIN)
        keep["message"]["chat"] = basic
        for payload in (asked, keep):
            await feed(adapter, payload)
            await adapter.idle()
        upgraded = message(old, user_id=ADMIN, migrate_to_chat_id=new)
        upgraded["chat"] = basic
        await feed(adapter, update(3, "message", **upgraded))
        await feed(adapter, update(4, "message", **message(new, user_id=ADMIN,
                                                            migrate_from_chat_id=old)))  # fmt: skip
        await feed(adapter, mention_update(5, new, "@parley_bot which word?", user_id=ADA))
        await feed(adapter, text_update(6, new, "/keep", user_id=BOB))
        await adapter.idle()
        said = [m.content for m in backend.requests[-1].messages]
        assert "Ada: the word is banana" in said
        assert "is on" in api.texts(new)[-1]
        assert await app.store.conversation_id(ConversationKey("telegram", str(new))) == 1
        assert await app.store.conversation_id(ConversationKey("telegram", str(old))) is None


def _timeout(request: GenerationRequest) -> str:
    raise BackendTimeout("first token did not come within 1 s")


async def test_backend_errors_reach_the_user_in_their_language(tmp_path: Path) -> None:
    backend = ScriptedBackend(_timeout)
    async with telegram_stack(tmp_path, backend, **FAST) as (_, adapter, api):
        await feed(adapter, text_update(1, 42, "hallo", language="de"))
        await feed(adapter, text_update(2, 43, "привет", language="ru"))
        await feed(adapter, text_update(3, 44, "hello", language="xx"))  # unknown: English
        await adapter.idle()
        assert api.texts(42) == [phrases.say(phrases.TIMEOUT, "de")]
        assert api.texts(42)[0].startswith("Das Sprachmodell")
        assert api.texts(43) == [phrases.say(phrases.TIMEOUT, "ru")]
        assert api.texts(44) == [phrases.TIMEOUT]

        await feed(adapter, text_update(4, 44, "/lang fr"))  # the user's choice comes first
        await feed(adapter, text_update(5, 44, "hello again"))
        await adapter.idle()
        assert api.texts(44)[-1] == phrases.say(phrases.TIMEOUT, "fr")


async def test_notices_are_in_the_senders_language(tmp_path: Path) -> None:
    photo = {"file_id": "p1", "file_unique_id": "p1", "width": 1, "height": 1}
    async with telegram_stack(tmp_path, None, **FAST) as (_, adapter, api):
        await feed(adapter, update(1, **message(42, None, language="es", photo=[photo])))
        await adapter.idle()
        assert api.texts(42) == [phrases.say(phrases.MEDIA, "es", mb=2)]
        assert api.texts(42)[0].startswith("Puedo leer")


async def test_polling_confirms_an_update_only_once_it_is_recorded(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        recorded = asyncio.Event()
        crash = asyncio.Event()
        submit = app.manager.submit

        async def dies_while_recording(incoming: Any) -> Any:
            crash.set()
            await asyncio.Event().wait()  # the process dies here: nothing recorded

        app.manager.submit = dies_while_recording  # type: ignore[method-assign]
        api.push_update(text_update(700, 42, "survive a crash"))
        first = asyncio.create_task(adapter._poll())
        await crash.wait()
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        before_restart = [c.params.get("offset") for c in api.sent("getUpdates")]
        assert 701 not in before_restart  # Telegram was never told it was delivered

        async def records(incoming: Any) -> Any:
            found = await submit(incoming)
            recorded.set()
            return found

        app.manager.submit = records  # type: ignore[method-assign]
        second = asyncio.create_task(adapter._poll())  # the restarted process
        try:
            assert await api.wait_for_messages(42, 1) == ["echo: survive a crash"]
            await recorded.wait()
        finally:
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
        await adapter.idle()
        rows = await app.store.history(1, 10)
        assert [r.content for r in rows] == ["survive a crash", "echo: survive a crash"]


async def test_only_a_group_admin_resets_the_groups_conversation(tmp_path: Path) -> None:
    """Any member's /reset set aside the whole group's conversation and stopped the answer
    another member was being given (a helper's review): in a group it is for admins, as
    /keep on is; in a private chat it is everyone's."""
    async with telegram_stack(tmp_path, None, **FAST) as (_app, adapter, api):
        api.admins.add((GROUP, ADMIN))
        await feed(adapter, text_update(1, GROUP, "/reset", user_id=BOB))
        await adapter.idle()
        assert api.texts(GROUP)[-1] == phrases.ADMINS_ONLY
        await feed(adapter, text_update(2, GROUP, "/reset", user_id=ADMIN))
        await feed(adapter, text_update(3, 42, "/reset", user_id=BOB))
        await adapter.idle()
        assert api.texts(GROUP)[-1].startswith("Fresh start")
        assert api.texts(42)[-1].startswith("Fresh start")


async def test_an_admins_command_from_a_group_upgraded_since_is_asked_of_the_supergroup(
    tmp_path: Path,
) -> None:
    """An admin's command sent in a basic group and handled once the group had become a
    supergroup (updates fetched after a restart, a webhook update Telegram sent again) met
    getChatMember's refusal of the old id (400, migrate_to_chat_id): the admin was told
    "Only an admin of this group can change that." The admin is asked of the supergroup,
    which keeps the group's admins."""
    old, new = -4567, -1004567
    async with telegram_stack(tmp_path, None, **FAST) as (_, adapter, api):
        api.admins.update({(old, ADMIN), (new, ADMIN)})
        api.migrated[old] = new
        keep = text_update(1, old, "/keep on", user_id=ADMIN)
        keep["message"]["chat"] = {"id": old, "type": "group", "title": "Team"}
        await feed(adapter, keep)
        await adapter.idle()
        assert [c.params["chat_id"] for c in api.sent("getChatMember")] == [new]
        assert "now kept" in api.texts(new)[-1]


async def test_access_rules_on_a_group_follow_it_when_it_becomes_a_supergroup(
    tmp_path: Path,
) -> None:
    """A group upgraded to a supergroup (made public, topics turned on) has a new chat id,
    and `[telegram.access]` named the old one: a blocked group was answered again, and an
    allowed one was told "this bot is private" at every message. The supergroup's messages
    now count as in the group it was, whether the upgrade was seen (the service messages) or
    happened while Parley was stopped (getChat on the old id says where it went)."""
    old, new = -4567, -1004567
    upgraded = message(old, user_id=ADMIN, migrate_to_chat_id=new)
    upgraded["chat"] = {"id": old, "type": "group", "title": "Team"}
    blocked = {"blocked_chats": [old]}
    async with telegram_stack(tmp_path / "blocked", ScriptedBackend(), access=blocked, **FAST) as (
        _,
        adapter,
        api,
    ):
        await feed(adapter, update(1, "message", **upgraded))
        await feed(adapter, mention_update(2, new, "@parley_bot hello", user_id=ADA))
        await adapter.idle()
        assert api.texts(new) == [phrases.NOT_ALLOWED]

    allowed = {"allowed_chats": [old]}
    async with telegram_stack(tmp_path / "allowed", ScriptedBackend(), access=allowed, **FAST) as (
        _,
        adapter,
        api,
    ):
        api.migrated[old] = new  # while Parley was stopped: no service message
        await feed(adapter, mention_update(1, new, "@parley_bot hello", user_id=ADA))
        await feed(adapter, mention_update(2, new, "@parley_bot again", user_id=BOB))
        await adapter.idle()
        assert api.texts(new) == ["echo: Ada: hello", "echo: Ada: again"]
        # Asked about once, not at every message.
        assert [c.params["chat_id"] for c in api.calls if c.method == "getChat"] == [old]


async def test_named_groups_are_asked_about_again_only_while_they_may_still_move() -> None:
    """Every RECHECK_S while group messages come, the named basic groups not known to have
    moved are asked about; a named supergroup, which never moves, only once."""
    asked: list[int] = []
    now = [0.0]

    async def get_chat(chat_id: int) -> ChatFullInfo:
        asked.append(chat_id)
        if chat_id == -3 and now[0] >= RECHECK_S:
            raise ChatMigrated(-1003)
        kind = Chat.SUPERGROUP if chat_id == -1002 else Chat.GROUP
        return ChatFullInfo(chat_id, kind, 0, 11, AcceptedGiftTypes(True, True, True, True, True))

    former = FormerChats(["-3", "-1002", "42"], get_chat, clock=lambda: now[0])
    assert await former.of(-100500) == ()
    assert await former.of(-100500) == ()  # not due yet
    now[0] = RECHECK_S
    await former.of(-1003)  # placed by what is known; the look goes on beside it
    await former.looked()
    assert await former.of(-1003) == ("-3",)
    now[0] = 2 * RECHECK_S
    assert await former.of(-1003) == ("-3",)  # nothing left that may move
    await former.looked()
    assert asked == [-1002, -3, -3]


async def test_a_bot_api_that_does_not_answer_about_named_groups_holds_no_message() -> None:
    """The look at the named groups was in each group message's way, every RECHECK_S: with
    getChat hanging (a Bot API slow or unreachable), every group message waited for it (and
    for each named group's in turn). A message waits for the process's first look alone, and
    for that at most FIRST_LOOK_WAIT_S; a later one goes on beside the messages."""
    hanging = asyncio.Event()
    now = [0.0]

    async def get_chat(chat_id: int) -> ChatFullInfo:
        await hanging.wait()
        raise ChatMigrated(-1003)

    former = FormerChats(["-3", "-4"], get_chat, clock=lambda: now[0])
    try:
        # safety nets only: before, each of these waited for getChat for good
        assert await asyncio.wait_for(former.of(-1003), 30) == ()
        now[0] = RECHECK_S
        assert await asyncio.wait_for(former.of(-1003), 30) == ()
        hanging.set()
        await former.looked()
        assert sorted(await former.of(-1003)) == ["-3", "-4"]
    finally:
        await former.aclose()


async def test_messages_that_come_while_the_first_look_is_under_way_wait_for_it() -> None:
    """Group messages of several chats come at once after a start (a backlog, each chat in
    its lane): only the first waited for the first look, and the others were placed by what
    was known then, nothing: a blocked supergroup was answered, an allowed one refused."""
    answered = asyncio.Event()
    asked = asyncio.Event()

    async def get_chat(chat_id: int) -> ChatFullInfo:
        asked.set()
        await answered.wait()
        raise ChatMigrated(-1003)

    former = FormerChats(["-3"], get_chat)
    try:
        first = asyncio.create_task(former.of(-100500))  # another group's message
        await asyncio.wait_for(asked.wait(), 30)  # safety net
        second = asyncio.create_task(former.of(-1003))  # the moved group's, in its lane
        await asyncio.sleep(0)
        answered.set()
        assert await asyncio.wait_for(first, 30) == ()
        assert await asyncio.wait_for(second, 30) == ("-3",)
    finally:
        await former.aclose()


async def test_media_from_a_sender_not_allowed_gets_the_refusal_not_the_media_sentence(
    tmp_path: Path,
) -> None:
    """A photo or sticker (one sentence on what the bot can read) skipped the access rules:
    someone not allowed, or anyone in a blocked group replying to the bot with a sticker,
    was told what the bot can read, in a chat it must not talk in, instead of the refusal
    every text of theirs gets."""
    photo = {"file_id": "p1", "file_unique_id": "p1", "width": 1, "height": 1}
    access = {"allowed_users": [ADA, ADMIN], "blocked_chats": [GROUP]}
    async with telegram_stack(tmp_path, None, access=access, **FAST) as (_, adapter, api):
        await feed(adapter, update(1, **message(BOB, None, photo=[photo])))
        await feed(adapter, update(2, **message(ADA, None, photo=[photo])))
        sticker = {"file_id": "s1", "file_unique_id": "s1", "width": 1, "height": 1,
                   "is_animated": False, "is_video": False, "type": "regular"}  # fmt: skip
        asked = message(GROUP, None, user_id=ADMIN, sticker=sticker,
                        reply_to_message=bot_message(GROUP, "an answer"))  # fmt: skip
        await feed(adapter, update(3, **asked))
        await adapter.idle()
        assert api.texts(BOB) == [phrases.NOT_ALLOWED]
        assert api.texts(ADA) == [phrases.say(phrases.MEDIA, "en", mb=2)]
        assert api.texts(GROUP) == [phrases.NOT_ALLOWED]


async def test_a_groups_message_handled_after_it_became_a_supergroup_goes_on_there(
    tmp_path: Path,
) -> None:
    """A message of a basic group handled after Telegram told of its upgrade (the two chats'
    updates are handled at once; a webhook update comes again) started a conversation of
    its own under the old id: the question was answered without the group's history, and an
    admin's "/keep on" was answered "now kept" while the supergroup kept nothing."""
    old, new = -4567, -1004567
    basic = {"id": old, "type": "group", "title": "Team"}

    def in_old_group(payload: dict[str, Any]) -> dict[str, Any]:
        payload["message"]["chat"] = basic
        return payload

    backend = ScriptedBackend()
    async with telegram_stack(tmp_path, backend, **FAST) as (_, adapter, api):
        api.admins.update({(old, ADMIN), (new, ADMIN)})
        await feed(adapter, in_old_group(mention_update(1, old, "@parley_bot banana", user_id=ADA)))
        await adapter.idle()
        await feed(adapter, update(2, "message", **message(new, user_id=ADMIN,
                                                            migrate_from_chat_id=old)))  # fmt: skip
        api.migrated[old] = new
        late = in_old_group(mention_update(3, old, "@parley_bot which word?", user_id=ADA))
        await feed(adapter, late)
        await feed(adapter, in_old_group(text_update(4, old, "/keep on", user_id=ADMIN)))
        await adapter.idle()
        await feed(adapter, text_update(5, new, "/keep", user_id=BOB))
        await adapter.idle()
        assert "Ada: banana" in [m.content for m in backend.requests[-1].messages]
        assert api.texts(new)[0] == "echo: Ada: which word?"
        assert "is on" in api.texts(new)[-1]
        assert not api.sent("sendMessage", old)[1:]  # the first answer only, before the upgrade
        late_answers = api.sent("sendMessage", new)[:2]  # quoting no old group's message id
        assert all("reply_parameters" not in c.params for c in late_answers)
