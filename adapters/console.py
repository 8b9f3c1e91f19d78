"""The terminal chat: `parley chat`, interactive or with piped stdin for scripts.

stdin is read by a daemon thread (a blocking read cannot be cancelled, and a daemon thread
never holds up shutdown); lines reach the event loop through a queue.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import TextIO

from bot.conversation.manager import ConversationManager
from bot.settings import ConsoleSettings
from bot.types import ConversationKey, Incoming, User

PLATFORM = "console"


class ConsoleAdapter:
    platform = PLATFORM

    def __init__(
        self,
        manager: ConversationManager,
        settings: ConsoleSettings,
        *,
        stdin: TextIO,
        stdout: TextIO,
        interactive: bool | None = None,
    ) -> None:
        self._manager = manager
        self._in = stdin
        self._out = stdout
        self._interactive = stdin.isatty() if interactive is None else interactive
        self.key = ConversationKey(PLATFORM, settings.chat)
        self.user = User(PLATFORM, settings.user, settings.user)

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        if self._interactive:
            self._write("parley> ")
        async for chunk in chunks:
            self._write(chunk)
        self._write("\n")

    async def run(self) -> None:
        lines = _stdin_lines(self._in)
        if self._interactive:
            self._write("Parley console. /help lists the commands; Ctrl-D ends the chat.\n")
        while True:
            if self._interactive:
                self._write("you> ")
            line = await lines.get()
            if line is None:
                return
            text = line.strip()
            if text:
                await self._manager.handle(self._incoming(text))

    def _incoming(self, text: str) -> Incoming:
        return Incoming(
            key=self.key,
            user=self.user,
            text=text,
            idempotency_key=f"console:{uuid.uuid4().hex}",
        )

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


def _stdin_lines(stream: TextIO) -> asyncio.Queue[str | None]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in stream:
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the loop closed while we were reading: nothing to hand over
            pass

    threading.Thread(target=pump, name="parley-stdin", daemon=True).start()
    return queue
