"""An auto_thread question edited by its sender renames the thread the bot opened for it, where
the thread still has the name the bot gave it (a member's own name for it stays), within
Discord's 100 characters. Before, the thread kept the original question as its title: one the
sender edited a secret out of kept showing it in the channel's thread list.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests import discord_events as ev
from tests.adapter_harness import discord_harness
from tests.discord_api import Call
from tests.doubles import ScriptedBackend

WAIT_S = 10
SECRET = "hunter2-secret"


def renames(api: Any, thread: int) -> list[Call]:
    return [c for c in api.calls if c.method == "PATCH" and c.path.endswith(f"/channels/{thread}")]


def edit_of(question: dict[str, Any], text: str, second: int) -> dict[str, Any]:
    return {**question, "content": f"<@{ev.BOT_ID}> {text}",
            "edited_timestamp": f"2026-12-01T12:00:{second:02d}.000000+00:00"}  # fmt: skip


async def asked_with_secret(h: Any) -> tuple[dict[str, Any], int]:
    """An auto_thread question with a secret in it, answered in the thread it opened."""
    question = ev.message_create(
        f"why is my login {SECRET} refused?", channel=ev.CHANNEL, mentions_bot=True
    )
    await h.deliver_event(question)
    await h.idle()
    return question, int(question["id"])


async def test_an_edited_question_renames_the_thread_the_bot_named_after_it(
    tmp_path: Path,
) -> None:
    backend = ScriptedBackend(lambda request: "Here.")
    async with discord_harness(tmp_path, backend, auto_thread=[ev.CHANNEL]) as h:
        question, thread = await asked_with_secret(h)
        assert h.api.channels[thread]["name"] == f"why is my login {SECRET} refused?"
        h.api.push("MESSAGE_UPDATE", edit_of(question, "why is my login refused?", 10))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(1)
        assert h.api.channels[thread]["name"] == "why is my login refused?"
        longer = "why is my login refused " + "again and " * 20 + "again?"
        h.api.push("MESSAGE_UPDATE", edit_of(question, longer, 20))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(2)
        name = h.api.channels[thread]["name"]
        assert len(name) == 100 and name.endswith("…") and longer.startswith(name[:-1])
        assert [c.status for c in renames(h.api, thread)] == [200, 200]
        assert len(backend.requests) == 1  # never answered again


async def test_a_thread_a_member_renamed_keeps_its_name(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda request: "Here.")
    async with discord_harness(tmp_path, backend, auto_thread=[ev.CHANNEL]) as h:
        question = ev.message_create("how do cranes work?", channel=ev.CHANNEL, mentions_bot=True)
        await h.deliver_event(question)
        await h.idle()
        thread = int(question["id"])
        h.api.rename(thread, "Cranes")  # a member's name for it (before the edit, in order)
        h.api.push("MESSAGE_UPDATE", edit_of(question, "how do tower cranes work?", 10))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(1)
        assert renames(h.api, thread) == []
        assert h.api.channels[thread]["name"] == "Cranes"


async def test_a_rename_given_up_does_not_keep_the_old_name_for_good(tmp_path: Path) -> None:
    """A rename Discord refused (or held back past RENAME_WAIT_S: two per 10 minutes) left the
    thread with the name the bot gave it before, which is no longer the thread_name of the
    recorded text: every later edit took it for a member's name and never renamed it, so the
    secret the sender edited out stayed in the thread list for good."""
    backend = ScriptedBackend(lambda request: "Here.")
    async with discord_harness(tmp_path, backend, auto_thread=[ev.CHANNEL]) as h:
        question, thread = await asked_with_secret(h)
        h.api.down = 1  # the first rename is refused (503)
        h.api.push("MESSAGE_UPDATE", edit_of(question, "why is my login refused?", 10))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(1)
        assert [c.status for c in renames(h.api, thread)] == [503]
        assert SECRET in h.api.channels[thread]["name"]
        h.api.push("MESSAGE_UPDATE", edit_of(question, "why is my login still refused?", 20))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(2)
        assert h.api.channels[thread]["name"] == "why is my login still refused?"
        assert len(backend.requests) == 1


def document(h: Any, name: str) -> dict[str, object]:
    content = b"Cranes carry tea across the harbour every morning.\n"
    h.api.files[name] = content
    url = h.api.cdn_url(name)
    return {"id": str(ev.GUILD + 7), "filename": name, "size": len(content),
            "content_type": "text/plain", "url": url, "proxy_url": url}  # fmt: skip


async def test_a_thread_named_after_a_document_is_renamed_after_its_question(
    tmp_path: Path,
) -> None:
    """A document sent with no question names its thread after the document. The rename
    compared the thread's name with the recorded question ("Please summarize this document
    (...)."): where another worker opened the thread (or after a restart), an edit adding a
    question never renamed it; and an edit removing the question named it "?"."""
    backend = ScriptedBackend(lambda request: "Here.")
    async with discord_harness(tmp_path, backend, auto_thread=[ev.CHANNEL]) as h:
        bare = ev.message_create(
            "", channel=ev.CHANNEL, mentions_bot=True, attachments=[document(h, "tides.txt")]
        )
        thread = int(bare["id"])
        # Opened by the other worker a moment before (160004 here): this one gave no name.
        h.api.open_thread(ev.CHANNEL, thread, "tides.txt", listed=False)
        await h.deliver_event(bare)
        await h.idle()
        assert h.api.texts(thread) == ["Here."]
        h.api.push("MESSAGE_UPDATE", edit_of(bare, "when is high tide?", 10))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(1)
        assert h.api.channels[thread]["name"] == "when is high tide?"
        h.api.push("MESSAGE_UPDATE", edit_of(bare, "", 20))  # the question taken out again
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(2)
        assert h.api.channels[thread]["name"] == "tides.txt"
        assert len(backend.requests) == 1  # never answered again
