"""Two edits of one message that are handled out of order (two workers at once, updates
delivered late) never let the older text win: the platform's edit time (Telegram's
edit_date, Discord's edited_timestamp) orders them, kept with the message (migration 0021)
and with an edit's mark. Before, whichever edit was handled last replaced the text, so a
user who edited a pasted password out and then fixed a typo could see the password come back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from telegram import Update

from bot.types import ConversationKey, Role
from tests import discord_events as ev
from tests.adapter_harness import discord_harness, telegram_harness
from tests.doubles import ScriptedBackend
from tests.telegram_updates import message, person
from tests.test_answer_deleted_in_chat import redis  # noqa: F401 (a fixture)

GROUP, ADA = -100781, 7
MENTION = "@parley_bot "
SECRET = "hunter2-secret"
WAIT_S = 10


def asked(update_id: int, text: str) -> dict[str, Any]:
    entities = [{"type": "mention", "offset": 0, "length": len(MENTION) - 1}]
    body = message(
        GROUP, MENTION + text, user_id=ADA, entities=entities, **{"from": person(ADA, "Ada")}
    )
    return {"update_id": update_id, "message": body}


def edited(update_id: int, original: dict[str, Any], text: str, after_s: int) -> dict[str, Any]:
    """The edited_message Telegram sends when `original`'s sender changes its text, `after_s`
    seconds after sending it."""
    body = dict(original["message"])
    entities = [{"type": "mention", "offset": 0, "length": len(MENTION) - 1}]
    body.update(text=MENTION + text, entities=entities, edit_date=body["date"] + after_s)
    return {"update_id": update_id, "edited_message": body}


async def feed(adapter: Any, payload: dict[str, Any]) -> None:
    await adapter.handle_update(Update.de_json(payload, adapter.bot))


async def users(h: Any, key: ConversationKey) -> list[str]:
    conversation = await h.app.store.conversation_id(key)
    assert conversation is not None
    return [m.content for m in await h.app.store.history(conversation, 20) if m.role is Role.USER]


async def test_an_older_telegram_edit_handled_last_never_replaces_a_newer_one(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        question = asked(1, f"log in with {SECRET}")
        await feed(h.adapter, question)
        await h.idle()
        # Edited twice; the second edit is handled first (another worker, a late update).
        await feed(h.adapter, edited(3, question, "log in with my pasword", after_s=20))
        await feed(h.adapter, edited(2, question, f"log in with {SECRET}!", after_s=10))
        key = ConversationKey("telegram", str(GROUP))
        assert await users(h, key) == ["log in with my pasword"]
        await feed(h.adapter, edited(4, question, "log in with my password", after_s=30))
        assert await users(h, key) == ["log in with my password"]  # a newer one still does


async def test_an_edit_back_to_the_recorded_text_still_outdates_older_edits(
    tmp_path: Path, database_url: str
) -> None:
    """The newest edit gives back the text the message holds: it changes no text, and the
    older edit handled after it must not replace that text either."""
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        question = asked(1, "what is new?")
        await feed(h.adapter, question)
        await h.idle()
        await feed(h.adapter, edited(3, question, "what is new?", after_s=20))
        await feed(h.adapter, edited(2, question, f"what is new? {SECRET}", after_s=10))
        key = ConversationKey("telegram", str(GROUP))
        assert await users(h, key) == ["what is new?"]


async def test_out_of_order_telegram_edits_before_the_message_is_recorded_keep_the_newest(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    """The edits come before their message is recorded: the mark keeps the newest."""
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        question = asked(1, f"log in with {SECRET}")
        await feed(h.adapter, edited(3, question, "log in with my password", after_s=20))
        await feed(h.adapter, edited(2, question, f"log in with {SECRET}!", after_s=10))
        await feed(h.adapter, question)
        await h.idle()
        assert len(backend.requests) == 1
        prompt = [m.content for m in backend.requests[0].messages if m.role is Role.USER]
        assert prompt[-1] == "Ada: log in with my password"
        key = ConversationKey("telegram", str(GROUP))
        assert await users(h, key) == ["log in with my password"]


async def test_an_older_discord_edit_handled_last_never_replaces_a_newer_one(
    tmp_path: Path, database_url: str
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    async with discord_harness(tmp_path, backend, database_url=database_url) as h:
        question = ev.message_create(f"my password is {SECRET}")
        h.api.push("MESSAGE_CREATE", question)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.handled(1)
            await h.idle()
        newer = {**question, "content": "my password is [removed]",
                 "edited_timestamp": "2026-12-01T12:00:20.000000+00:00"}  # fmt: skip
        older = {**question, "content": f"my password is {SECRET}!",
                 "edited_timestamp": "2026-12-01T12:00:10.000000+00:00"}  # fmt: skip
        h.api.push("MESSAGE_UPDATE", newer)
        h.api.push("MESSAGE_UPDATE", older)
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(2)
        key = ConversationKey("discord", str(ev.DM))
        assert await users(h, key) == ["my password is [removed]"]
