"""Long polling records chats at once: one chat's document, held in its download, stalls no
other chat; a chat's own updates keep their order; Telegram is told an update is delivered
(the offset passes it) only once it and every update before it are recorded; an update that
getUpdates sends again while it is in flight is not acted on twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from telegram import Update

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.polling import CHAT_QUEUE_MAX, REPOLL_S, Backlog
from bot.app import Parley
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.telegram_api import FakeBotApi
from tests.telegram_updates import message, telegram_stack, text_update, update

FAST: dict[str, Any] = {"stream_interval_s": 0.05}
A, B = 42, 43
DOC_ID = 800
# "Not blocked": far below the 30 s a held download could last before PTB gives up on it.
NOT_BLOCKED_S = 10.0


@dataclass
class HeldDownloads(FakeBotApi):
    """The stand-in Bot API, its file downloads held until `release` is set."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    downloading: asyncio.Event = field(default_factory=asyncio.Event)
    downloads: int = 0
    # getUpdates answered while a download was held, and an event per answer.
    polls_while_held: int = 0
    polled: asyncio.Event = field(default_factory=asyncio.Event)

    async def _file(self, request: Request) -> Response:
        self.downloads += 1
        self.downloading.set()
        await self.release.wait()
        return await super()._file(request)

    async def _getUpdates(self, params: dict[str, Any]) -> object:
        answer = await super()._getUpdates(params)
        if self.downloading.is_set() and not self.release.is_set():
            self.polls_while_held += 1
        self.polled.set()
        return answer

    async def wait_polls_while_held(self, count: int) -> None:
        while self.polls_while_held < count:
            self.polled.clear()
            await self.polled.wait()

    def offsets(self) -> list[int]:
        return [c.params.get("offset") or 0 for c in self.sent("getUpdates")]


def document_update(update_id: int, chat_id: int) -> dict[str, Any]:
    doc = {
        "file_id": "doc-a",
        "file_unique_id": "ua",
        "file_name": "notes.md",
        "mime_type": "text/markdown",
        "file_size": 30,
    }
    return update(update_id, **message(chat_id, document=doc, caption="What day?"))


@asynccontextmanager
async def held_stack(
    tmp_path: Path,
) -> AsyncIterator[tuple[Parley, TelegramAdapter, HeldDownloads]]:
    api = HeldDownloads()
    api.files["doc-a"] = b"# Notes\nThe meeting is on Monday."
    async with telegram_stack(tmp_path, ScriptedBackend(), api=api, **FAST) as (app, adapter, _):
        try:
            yield app, adapter, api
        finally:
            api.release.set()  # a failed test must not leave the stand-in's handler waiting


@asynccontextmanager
async def polling(adapter: TelegramAdapter) -> AsyncIterator[None]:
    """The adapter polls inside the block; leaving it stops the process (cancels run())."""
    task = asyncio.create_task(adapter.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _user_texts(app: Parley, chat_id: int) -> list[str]:
    cid = await app.store.conversation_id(ConversationKey("telegram", str(chat_id), ""))
    rows = await app.store.history(cid, 50) if cid is not None else []
    return [r.content for r in rows if r.role == "user"]


def _lanes_left() -> list[asyncio.Task[Any]]:
    """The adapter's per-chat tasks still running."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__.startswith("Backlog.")  # type: ignore[union-attr]
    ]


async def test_a_held_document_stalls_no_other_chat_and_its_chat_keeps_order(
    tmp_path: Path,
) -> None:
    async with held_stack(tmp_path) as (app, adapter, api), polling(adapter):
        api.push_update(document_update(DOC_ID, A))
        async with asyncio.timeout(NOT_BLOCKED_S):
            await api.downloading.wait()
            api.push_update(text_update(DOC_ID + 1, A, "after the document"))
            api.push_update(text_update(DOC_ID + 2, B, "hello from B"))
            assert await api.wait_for_messages(B, 1) == ["echo: hello from B"]
            await api.wait_polls_while_held(3)  # A was sent again, at least twice, and taken
        assert api.downloads == 1  # ... but downloaded once
        assert await _user_texts(app, B) == ["hello from B"]
        assert await _user_texts(app, A) == []  # A's text waits for A's own document
        assert max(api.offsets()) <= DOC_ID  # nothing confirmed past A's document

        api.release.set()
        async with asyncio.timeout(NOT_BLOCKED_S):
            await api.wait_for_messages(A, 1)
            await adapter.idle()
        texts = await _user_texts(app, A)
        assert texts[0].startswith("What day?\n\n") and texts[1:] == ["after the document"]
        assert api.downloads == 1


async def test_an_update_in_flight_at_a_restart_comes_again_and_is_answered_once(
    tmp_path: Path,
) -> None:
    async with held_stack(tmp_path) as (app, adapter, api):
        api.push_update(document_update(DOC_ID, A))
        api.push_update(text_update(DOC_ID + 1, B, "hello from B"))
        async with polling(adapter), asyncio.timeout(NOT_BLOCKED_S):
            await api.downloading.wait()
            await api.wait_for_messages(B, 1)
        # The first process is gone (its document never finished); B was recorded.
        assert max(api.offsets()) <= DOC_ID
        assert _lanes_left() == []  # its lanes were cancelled and awaited, none left behind
        api.downloading.clear()
        async with polling(adapter), asyncio.timeout(NOT_BLOCKED_S):
            await api.downloading.wait()  # the restarted process gets A again
            api.release.set()
            await api.wait_for_messages(A, 1)
            await adapter.idle()
            api.push_update(text_update(DOC_ID + 2, B, "and again"))
            await api.wait_for_messages(B, 2)
        assert api.texts(B) == ["echo: hello from B", "echo: and again"]  # B's first once
        assert await _user_texts(app, B) == ["hello from B", "and again"]
        assert len(api.texts(A)) == 1
        assert max(api.offsets()) > DOC_ID + 1  # once recorded, both were confirmed


async def test_a_full_chat_queue_waits_at_telegram_and_loses_nothing(tmp_path: Path) -> None:
    many = CHAT_QUEUE_MAX + 3
    async with held_stack(tmp_path) as (app, adapter, api), polling(adapter):
        api.push_update(document_update(DOC_ID, A))
        async with asyncio.timeout(NOT_BLOCKED_S):
            await api.downloading.wait()
            for n in range(many):
                api.push_update(text_update(DOC_ID + 1 + n, A, f"a{n}"))
            api.push_update(text_update(DOC_ID + 1 + many, B, "hello from B"))
            assert await api.wait_for_messages(B, 1) == ["echo: hello from B"]
        api.release.set()
        async with asyncio.timeout(NOT_BLOCKED_S):
            await api.wait_for_messages(A, 1)
            await adapter.idle()
            while max(api.offsets()) <= DOC_ID + 1 + many:  # every update confirmed
                api.polled.clear()
                await api.polled.wait()
        assert (await _user_texts(app, A))[1:] == [f"a{n}" for n in range(many)]
        assert api.downloads == 1


async def test_polling_waits_for_progress_instead_of_asking_again_at_once(
    tmp_path: Path,
) -> None:
    # Every getUpdates answers at once while A's document is held: a loop that asked again
    # straight away would make hundreds of calls in the time this takes.
    async with held_stack(tmp_path) as (_, adapter, api), polling(adapter):
        api.push_update(document_update(DOC_ID, A))
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(NOT_BLOCKED_S):
            await api.downloading.wait()
            started = loop.time()
            await api.wait_polls_while_held(4)
        elapsed = loop.time() - started
        # Generous: four times the pace the adapter keeps (one per REPOLL_S), plus two.
        assert api.polls_while_held <= 2 + 4 * elapsed / REPOLL_S


async def test_the_offset_stops_at_an_update_a_full_chat_queue_left_at_telegram() -> None:
    recorded: list[int] = []
    held, taken = asyncio.Event(), asyncio.Event()
    first = CHAT_QUEUE_MAX  # updates 1..first fill chat A's queue

    async def record(update: Update) -> None:
        if update.update_id == 1:
            await held.wait()
        recorded.append(update.update_id)
        if len(recorded) in (first, first + 3):
            taken.set()

    def parse(update_id: int, data: dict[str, Any]) -> Update | None:
        return Update.de_json(data, None)

    batch = [(i, text_update(i, A, f"m{i}")) for i in range(1, first + 4)]
    backlog = Backlog(record)
    try:
        backlog.take(batch, parse)
        assert backlog.next_offset() == 1  # nothing recorded: nothing confirmed
        held.set()
        await taken.wait()
        assert backlog.busy  # three updates are still at Telegram only
        assert backlog.next_offset() == first + 1  # not past them
        taken.clear()
        backlog.take(batch, parse)  # getUpdates sends them again, with the recorded ones
        await taken.wait()
        assert recorded == list(range(1, first + 4))  # each once, in order
        assert not backlog.busy
        assert backlog.next_offset() == first + 4
    finally:
        await backlog.aclose()


async def test_updates_numbered_anew_after_a_quiet_week_are_answered(tmp_path: Path) -> None:
    """After a week without updates Telegram numbers them anew from a random id, often below
    the offset a running poller sends. Such an update was taken for one already confirmed
    and skipped, and the offset never passed it: every getUpdates answered with it at once,
    in a loop, and the bot answered nobody again."""
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, api):
        async with polling(adapter), asyncio.timeout(NOT_BLOCKED_S):
            api.push_update(text_update(900_000, A, "before the quiet week"))
            await api.wait_for_messages(A, 1)
            api.restart_numbering()
            api.push_update(text_update(1_234, A, "after it"))
            api.push_update(text_update(1_235, B, "me too"))
            assert await api.wait_for_messages(A, 2) == [
                "echo: before the quiet week",
                "echo: after it",
            ]
            assert await api.wait_for_messages(B, 1) == ["echo: me too"]
            api.push_update(text_update(1_236, A, "and later"))
            await api.wait_for_messages(A, 3)
        await adapter.idle()
        assert api.texts(A)[-1] == "echo: and later"
        assert api.updates == []  # each one confirmed
