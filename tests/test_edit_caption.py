"""An edited document caption is the user's question about the document, changed: it replaces
the question its message was recorded with, and the document's text, fenced after it, stays
(as a captioned document is recorded when first sent: bot.conversation.intake). Before, an
edited caption was ignored (a pending document was answered with the old question); in a
group, an edit that took out the bot's mention replaced the whole message, the document's
text with it, by the caption alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from telegram import Update

from bot import documents
from bot.types import ConversationKey, Role
from tests import discord_events as ev
from tests.adapter_harness import discord_harness, telegram_harness
from tests.doubles import ScriptedBackend
from tests.telegram_updates import message, person
from tests.test_answer_deleted_in_chat import HeldAnswer, redis  # noqa: F401 (a fixture)

CHAT, GROUP, ADA = 4242, -100783, 7
MENTION = "@parley_bot "
NOTES = "# Notes\nThe meeting is on Monday."
BLOCK = f"```document\n{NOTES}\n```"
WAIT_S = 10
DOC = {"file_id": "doc-1", "file_unique_id": "u1", "file_name": "notes.md",
       "mime_type": "text/markdown", "file_size": len(NOTES)}  # fmt: skip


def sent(update_id: int, chat: int, caption: str | None, **more: Any) -> dict[str, Any]:
    body = message(chat, user_id=ADA, document=DOC, **{"from": person(ADA, "Ada")}, **more)
    if caption is not None:
        body["caption"] = caption
    return {"update_id": update_id, "message": body}


def edited(
    update_id: int, original: dict[str, Any], caption: str, after_s: int, **more: Any
) -> dict[str, Any]:
    """The edited_message Telegram sends when `original`'s sender changes its caption."""
    body = {**original["message"], "caption": caption, "edit_date": date_of(original) + after_s}
    body.pop("caption_entities", None)
    body.update(more)
    return {"update_id": update_id, "edited_message": body}


def date_of(update: dict[str, Any]) -> int:
    return int(update["message"]["date"])


def mention() -> dict[str, Any]:
    return {"caption_entities": [{"type": "mention", "offset": 0, "length": len(MENTION) - 1}]}


async def feed(adapter: Any, payload: dict[str, Any]) -> None:
    await adapter.handle_update(Update.de_json(payload, adapter.bot))


async def pending_behind_a_held_turn(h: Any, caption: str) -> dict[str, Any]:
    """A group's first question, its turn held running, then a document (doc-1) sent with
    `caption`, read and recorded, pending behind that turn: the update sent."""
    entities = [{"type": "mention", "offset": 0, "length": len(MENTION) - 1}]
    hello = message(GROUP, MENTION + "hello", user_id=ADA, entities=entities)
    await feed(h.adapter, {"update_id": 1, "message": hello})
    async with asyncio.timeout(WAIT_S):
        await h.api.wait_for_messages(GROUP, 1)  # its turn runs, held
    document = sent(2, GROUP, MENTION + caption, **mention())
    await feed(h.adapter, document)
    return document


async def users(h: Any, key: ConversationKey) -> list[str]:
    conversation = await h.app.store.conversation_id(key)
    assert conversation is not None
    assert await h.app.store.pending(conversation, 10) == []
    return [m.content for m in await h.app.store.history(conversation, 20) if m.role is Role.USER]


async def test_an_edited_caption_is_the_documents_new_question(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    backend = HeldAnswer()
    async with telegram_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        h.api.files["doc-1"] = NOTES.encode()
        document = await pending_behind_a_held_turn(h, "What day?")
        await feed(h.adapter, edited(3, document, MENTION + "Which month?", after_s=5, **mention()))
        backend.release.set()
        await h.idle()
        assert len(backend.requests) == 2  # each answered once
        assert backend.requests[1].messages[-1].content == f"Ada: Which month?\n\n{BLOCK}"
        await feed(h.adapter, edited(4, document, MENTION, after_s=9, **mention()))  # no question
        await h.idle()
        assert len(backend.requests) == 2  # never answered again
        key = ConversationKey("telegram", str(GROUP))
        summarize = "Please summarize this document (notes.md)."
        assert await users(h, key) == ["hello", f"{summarize}\n\n{BLOCK}"]


async def test_a_caption_edited_before_its_document_is_recorded_is_its_question(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        h.api.files["doc-1"] = NOTES.encode()
        document = sent(1, CHAT, "What day?")
        await feed(h.adapter, edited(2, document, "Which month?", after_s=5))
        await feed(h.adapter, document)
        await h.idle()
        assert len(backend.requests) == 1
        assert backend.requests[0].messages[-1].content == f"Which month?\n\n{BLOCK}"
        key = ConversationKey("telegram", str(CHAT))
        assert await users(h, key) == [f"Which month?\n\n{BLOCK}"]


async def test_a_group_caption_edited_without_the_mention_keeps_its_document(
    tmp_path: Path, database_url: str
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        h.api.files["doc-1"] = NOTES.encode()
        document = sent(1, GROUP, MENTION + "what day?", **mention())
        await feed(h.adapter, document)
        await h.idle()
        await feed(h.adapter, edited(2, document, "what day is it, all?", after_s=5))
        await h.idle()
        assert len(backend.requests) == 1
        key = ConversationKey("telegram", str(GROUP))
        assert await users(h, key) == [f"what day is it, all?\n\n{BLOCK}"]


async def test_a_document_replaced_by_an_edit_replaces_the_documents_text(
    tmp_path: Path,
    database_url: str,
    redis: dict[str, Any] | None,  # noqa: F811
) -> None:
    """Telegram lets a sender replace a message's file: the edited_message carries another
    document (another file_unique_id). The old file's text stayed the message's content (only
    the caption was read from an edit); the new file's text replaces it, pending or answered.
    """
    backend = HeldAnswer()
    agenda = "# Agenda\nThe budget is due in March."
    new = {**DOC, "file_id": "doc-2", "file_unique_id": "u2", "file_name": "agenda.md",
           "file_size": len(agenda)}  # fmt: skip
    async with telegram_harness(tmp_path, backend, database_url=database_url, redis=redis) as h:
        h.api.files["doc-1"], h.api.files["doc-2"] = NOTES.encode(), agenda.encode()
        document = await pending_behind_a_held_turn(h, "What is due?")
        await feed(h.adapter, edited(3, document, MENTION + "What is due?", after_s=5,
                                     document=new, **mention()))  # fmt: skip
        backend.release.set()
        await h.idle()
        assert len(backend.requests) == 2  # each answered once
        replaced = f"Ada: What is due?\n\n```document\n{agenda}\n```"
        assert backend.requests[1].messages[-1].content == replaced
        await feed(
            h.adapter, edited(4, document, MENTION + "When?", after_s=9, document=DOC, **mention())
        )  # the first file back; fmt: skip
        await h.idle()
        assert len(backend.requests) == 2  # never answered again
        key = ConversationKey("telegram", str(GROUP))
        assert await users(h, key) == ["hello", f"When?\n\n{BLOCK}"]


async def test_a_document_replaced_by_one_too_large_to_read_leaves_no_old_text(
    tmp_path: Path, database_url: str
) -> None:
    backend = ScriptedBackend(lambda request: "Noted.")
    huge = {**DOC, "file_id": "doc-3", "file_unique_id": "u3", "file_name": "big.md",
            "file_size": 10**9}  # fmt: skip
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        h.api.files["doc-1"] = NOTES.encode()
        document = sent(1, CHAT, "What day?")
        await feed(h.adapter, document)
        await h.idle()
        await feed(h.adapter, edited(2, document, "What day?", after_s=5, document=huge))
        await h.idle()
        assert len(backend.requests) == 1  # never answered again
        (content,) = await users(h, ConversationKey("telegram", str(CHAT)))
        assert NOTES not in content and "big.md" in content and "not kept" in content, content


def discord_document(h: Any, text: str, **more: Any) -> dict[str, Any]:
    url = h.api.cdn_url("notes.md")
    h.api.files["notes.md"] = NOTES.encode()
    doc = {"id": "1", "filename": "notes.md", "size": len(NOTES),
           "content_type": "text/markdown", "url": url, "proxy_url": url}  # fmt: skip
    return ev.message_create(text, attachments=[doc], **more)


async def test_a_discord_documents_edited_text_is_its_new_question(
    tmp_path: Path, database_url: str
) -> None:
    """Discord's message with a document, its text edited: the same as Telegram's caption, in
    a direct message and in a server channel where the edit took out the mention."""
    backend = ScriptedBackend(lambda request: "Noted.")
    async with discord_harness(tmp_path, backend, database_url=database_url) as h:
        direct = discord_document(h, "What day?")
        server = discord_document(h, "what day?", channel=ev.CHANNEL, mentions_bot=True)
        for question in (direct, server):
            await h.deliver_event(question)
        await h.idle()
        at = "2026-12-01T12:00:10.000000+00:00"
        h.api.push("MESSAGE_UPDATE", {**direct, "content": "Which month?", "edited_timestamp": at})
        h.api.push("MESSAGE_UPDATE", {**server, "content": "which day, all?", "mentions": [],
                                      "edited_timestamp": at})  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            await h.adapter.edited(2)
            await h.idle()
        assert len(backend.requests) == 2  # never answered again
        dm, channel = (
            ConversationKey("discord", str(ev.DM)),
            ConversationKey("discord", str(ev.CHANNEL)),
        )
        assert await users(h, dm) == [f"Which month?\n\n{BLOCK}"]
        assert await users(h, channel) == [f"which day, all?\n\n{BLOCK}"]


async def test_a_caption_edit_whose_download_fails_keeps_the_documents_text(
    tmp_path: Path, database_url: str
) -> None:
    """An edit of a document's message downloads its file again (it may be another). A
    download that failed for the moment left a stub in the place of the
    whole message: the document's text, read when it was sent, and the edited question gone.
    The edit is then its caption's, the text recorded staying."""
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        h.api.files["doc-1"] = NOTES.encode()
        document = sent(1, CHAT, "What day?")
        await feed(h.adapter, document)
        await h.idle()
        del h.api.files["doc-1"]  # the Bot API fails to serve it
        await feed(h.adapter, edited(2, document, "Which month?", after_s=5))
        await h.idle()
        assert len([c for c in h.api.calls if c.method == "getFile"]) > 1  # tried again
        key = ConversationKey("telegram", str(CHAT))
        assert await users(h, key) == [f"Which month?\n\n{BLOCK}"]


def _killed_by_the_kernel(*_: object) -> None:
    """A reading child the kernel ends (SIGKILL: the OOM killer, the host short of memory),
    not one past its own memory cap: spawned by reference, so a module-level function."""
    os.kill(os.getpid(), signal.SIGKILL)


async def test_a_caption_edit_whose_reader_the_kernel_killed_keeps_the_documents_text(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader the kernel killed says nothing of the file (the host was short of memory
    for the moment), yet an edit meeting one took it for a file that cannot be read: a
    stub replaced the document's text read when it was sent, and the message, still
    pending, was answered about the stub. The edit is its caption's, as for a failed
    download: the text recorded stays and is answered as the document first sent was."""
    backend = HeldAnswer()
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        h.api.files["doc-1"] = NOTES.encode()
        document = await pending_behind_a_held_turn(h, "What day?")
        monkeypatch.setattr(documents, "read_in_child", _killed_by_the_kernel)
        await feed(h.adapter, edited(3, document, MENTION + "Which month?", after_s=5,
                                     **mention()))  # fmt: skip
        backend.release.set()
        await h.idle()
        assert len(backend.requests) == 2  # each answered once
        assert backend.requests[1].messages[-1].content == f"Ada: Which month?\n\n{BLOCK}"
        key = ConversationKey("telegram", str(GROUP))
        assert await users(h, key) == ["hello", f"Which month?\n\n{BLOCK}"]


async def test_a_document_replaced_by_an_unreadable_one_keeps_the_question(
    tmp_path: Path, database_url: str
) -> None:
    """A file replaced by one that cannot be read (here, bytes that are no text) leaves a stub
    for the document's text, after the edited question, which was lost with it."""
    backend = ScriptedBackend(lambda request: "Noted.")
    binary = {**DOC, "file_id": "doc-2", "file_unique_id": "u2", "file_size": 64}
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        h.api.files["doc-1"], h.api.files["doc-2"] = NOTES.encode(), bytes(range(64))
        document = sent(1, CHAT, "What day?")
        await feed(h.adapter, document)
        await h.idle()
        await feed(h.adapter, edited(2, document, "Which month?", after_s=5, document=binary))
        await h.idle()
        key = ConversationKey("telegram", str(CHAT))
        [content] = await users(h, key)
        assert content.startswith("Which month?\n\n[message: document 'notes.md', 64 bytes,")
        assert NOTES not in content


async def test_an_edit_of_a_document_never_recorded_downloads_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """A document refused when sent (bytes that are no text: downloaded, read, refused) has
    no message an edit could change, yet each edit of its caption downloaded and read it
    again (a child process each), beyond any rate limit: the edit found nothing to replace
    only after the read. Nothing recorded, nothing downloaded."""
    backend = ScriptedBackend(lambda request: "Noted.")
    async with telegram_harness(tmp_path, backend, database_url=database_url) as h:
        h.api.files["doc-1"] = bytes(range(64))
        document = sent(1, CHAT, "What day?")
        await feed(h.adapter, document)
        await h.idle()
        assert len(h.api.sent("getFile")) == 1
        for n in range(2, 5):
            await feed(h.adapter, edited(n, document, f"What day? ({n})", after_s=n))
        await h.idle()
        assert len(h.api.sent("getFile")) == 1
        assert backend.requests == []


@asynccontextmanager
async def _one_message_a_window(tmp_path: Path, database_url: str) -> AsyncIterator[Any]:
    """A Telegram harness whose senders may send one message a rate window, the document
    `doc-1` (NOTES) on the Bot API stand-in, and a model that answers "Noted."."""
    backend = ScriptedBackend(lambda request: "Noted.")
    limits = {"rate_limit_messages": 1}
    async with telegram_harness(
        tmp_path, backend, database_url=database_url, conversation=limits
    ) as h:
        h.api.files["doc-1"] = NOTES.encode()
        yield h


async def test_an_edit_of_a_document_over_the_rate_limit_downloads_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """A document over its sender's rate limit is recorded as a stub, never downloaded; an
    edit of its caption downloaded and read it all the same, for nothing (a stub is never
    edited): a flood of documents, each edited, read every one. Not downloaded."""
    async with _one_message_a_window(tmp_path, database_url) as h:
        first = sent(1, CHAT, "What day?")
        await feed(h.adapter, first)
        await h.idle()
        flood = sent(2, CHAT, "And now?")
        await feed(h.adapter, flood)
        await h.idle()
        assert len(h.api.sent("getFile")) == 1
        await feed(h.adapter, edited(3, flood, "And now, then?", after_s=5))
        await h.idle()
        assert len(h.api.sent("getFile")) == 1
        key = ConversationKey("telegram", str(CHAT))
        [_, stub] = await users(h, key)
        assert stub.startswith("[message: document 'notes.md'")


async def test_edits_of_a_document_over_the_edit_limit_download_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """Each edit of a document's caption downloads and reads the file again; past the
    sender's limit of edits, which stubs the message all the same, it was still downloaded
    and read (a child process each): a sender editing one caption over and over had the bot
    download it every time. Counted before the download, the one over the limit is not."""
    async with _one_message_a_window(tmp_path, database_url) as h:
        document = sent(1, CHAT, "What day?")
        await feed(h.adapter, document)
        await h.idle()
        await feed(h.adapter, edited(2, document, "Which month?", after_s=5))
        await h.idle()
        assert len(h.api.sent("getFile")) == 2
        key = ConversationKey("telegram", str(CHAT))
        assert await users(h, key) == [f"Which month?\n\n{BLOCK}"]
        await feed(h.adapter, edited(3, document, "Which year?", after_s=9))
        await h.idle()
        assert len(h.api.sent("getFile")) == 2
        [stub] = await users(h, key)
        assert stub.startswith("[message: ") and stub.endswith("over the rate limit]")
