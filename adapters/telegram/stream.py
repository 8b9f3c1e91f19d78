"""Shows one streamed answer in one chat.

The model's deltas are read by their own task into a buffer, so the model never waits for
Telegram; the buffer is shown at most once per interval (the latest text wins, nothing
queues up). In a private chat the growing answer is a draft (`sendMessageDraft`) and the
final text is sent with `sendMessage`; elsewhere one message is sent and then edited. Pieces
of a long answer that are complete (see `split`) are sent as soon as they are, and never
touched again.

Telegram failures end the showing, never the reading: the answer is still read to the end
and recorded, and the log says why the chat did not get it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from telegram import Bot, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, TelegramError

from .formatting import to_html
from .split import split_message

log = logging.getLogger(__name__)

# Telegram allows about 20 messages a minute in a group; pacing edits to match keeps a long
# answer's updates even instead of bursting and then stalling.
GROUP_INTERVAL_S = 3.0


@dataclass(frozen=True, slots=True)
class Target:
    chat_id: int
    thread_id: int | None
    quote: ReplyParameters | None = None  # the first message of the answer replies to it

    @property
    def private(self) -> bool:
        return self.chat_id > 0  # users' ids are positive, groups' and channels' negative


@dataclass
class _Buffer:
    parts: list[str] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ReplyStream:
    def __init__(self, bot: Bot, target: Target, *, interval_s: float, drafts: bool) -> None:
        self._bot = bot
        self._target = target
        self._interval = interval_s if target.private else max(interval_s, GROUP_INTERVAL_S)
        self._drafts = drafts and target.private
        self._draft_id = secrets.randbelow(2**31 - 2) + 1
        self._shown: dict[int, tuple[int, str]] = {}  # piece index -> (message id, markdown)
        self._broken = False
        self.updates = 0

    async def play(self, chunks: AsyncIterator[str]) -> None:
        buffer = _Buffer()
        reader = asyncio.create_task(_read(chunks, buffer))
        try:
            await self._follow(buffer)
            await reader  # the model's errors belong to the core
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        await self._guarded(self._show_final, buffer.text)

    async def _follow(self, buffer: _Buffer) -> None:
        last = float("-inf")
        while True:
            await buffer.changed.wait()
            buffer.changed.clear()
            if buffer.done:
                return
            pause = last + self._interval - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            if buffer.done:
                return
            last = time.monotonic()
            await self._guarded(self._show_partial, buffer.text)

    async def _guarded(self, show: Callable[[str], Awaitable[None]], text: str) -> None:
        if self._broken:
            return
        try:
            await show(text)
        except TelegramError as exc:
            self._broken = True
            log.warning("chat %s: reply not shown: %s", self._target.chat_id, exc)

    async def _show_partial(self, text: str) -> None:
        *complete, growing = split_message(text)
        for i, piece in enumerate(complete):
            await self._put(i, piece)
        if not growing.strip():
            return
        if self._drafts:
            await self._draft(growing)
        else:
            await self._put(len(complete), growing)

    async def _show_final(self, text: str) -> None:
        for i, piece in enumerate(split_message(text)):
            if piece.strip():
                await self._put(i, piece)

    async def _put(self, index: int, markdown: str) -> None:
        shown = self._shown.get(index)
        if shown is None:
            message_id = await self._send(markdown)
            self._shown[index] = (message_id, markdown)
        elif shown[1] != markdown:
            await self._edit(shown[0], markdown)
            self._shown[index] = (shown[0], markdown)
        else:
            return
        self.updates += 1

    async def _send(self, markdown: str) -> int:
        t = self._target
        quote = t.quote if not self._shown else None  # only the answer's first message
        try:
            sent = await self._bot.send_message(
                t.chat_id,
                to_html(markdown),
                parse_mode=ParseMode.HTML,
                message_thread_id=t.thread_id,
                reply_parameters=quote,
            )
        except BadRequest as exc:
            if not _is_parse_error(exc):
                raise
            log.info("chat %s: HTML rejected (%s); sending plain text", t.chat_id, exc)
            sent = await self._bot.send_message(
                t.chat_id, markdown, message_thread_id=t.thread_id, reply_parameters=quote
            )
        return sent.message_id

    async def _edit(self, message_id: int, markdown: str) -> None:
        chat_id = self._target.chat_id
        try:
            try:
                await self._bot.edit_message_text(
                    to_html(markdown), chat_id, message_id, parse_mode=ParseMode.HTML
                )
            except BadRequest as exc:
                if not _is_parse_error(exc):
                    raise
                await self._bot.edit_message_text(markdown, chat_id, message_id)
        except BadRequest as exc:
            if "not modified" not in str(exc).lower():
                raise

    async def _draft(self, markdown: str) -> None:
        t = self._target
        try:
            await self._bot.send_message_draft(
                t.chat_id, self._draft_id, to_html(markdown), t.thread_id, ParseMode.HTML
            )
        except BadRequest as exc:
            if not _is_parse_error(exc):
                raise
            await self._bot.send_message_draft(t.chat_id, self._draft_id, markdown, t.thread_id)
        self.updates += 1


async def _read(chunks: AsyncIterator[str], buffer: _Buffer) -> None:
    try:
        async for chunk in chunks:
            buffer.parts.append(chunk)
            buffer.changed.set()
    finally:
        buffer.done = True
        buffer.changed.set()


def _is_parse_error(exc: BadRequest) -> bool:
    return "can't parse entities" in str(exc).lower() or "can't find end" in str(exc).lower()
