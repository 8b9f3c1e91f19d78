"""The terminal chat: `parley chat`, interactive or with piped stdin for scripts.

stdin is read by a daemon thread (a blocking read cannot be cancelled, and a daemon thread
never holds up shutdown); lines reach the event loop through a bounded queue (the thread waits
when it is full). Each line is answered before the next is read, so piped lines get one
answer each; a /stop or /reset typed while an answer streams goes in at once and stops it.
The end of input ends the console only: other adapters of the same `parley run` go on.

Bytes that are not in stdin's encoding are read as U+FFFD, never as an error or a lone
surrogate. Once the reader of stdout has left (`parley chat | head -1`), the console reads no
more: the answer it could not show stays pending (OutputAway), and leaving the console raises
BrokenPipeError, which `parley` reports as any command whose reader left (exit 141, nothing
printed). The console shows the answers of its own conversation only: one of another console
conversation (left pending by an earlier run, and answered now) is recorded, not printed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import uuid
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, TextIO

from pydantic import field_validator

from bot.adapter_registry import AdapterSettings, AdapterSpec
from bot.conversation.intake import Intake
from bot.conversation.manager import OutputAway, stops_a_reply
from bot.errors import AdapterError, StorageError
from bot.outage import is_outage
from bot.storage.base import Recorded
from bot.storage.database import known_failure
from bot.text.storable import id_problem
from bot.text.terminal import printable
from bot.types import ConversationKey, Incoming, User

if TYPE_CHECKING:
    from adapters.kit.runner import AdapterHost

log = logging.getLogger(__name__)

PLATFORM = "console"
# Lines read ahead of the conversation; past this the reading thread waits.
LINES_AHEAD = 64
# A line the database could not take is tried again after these many seconds, doubling.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0
CUT_BY_STOP = (
    "\n(Parley stopped before this answer was finished. Your message stays pending: the "
    "next start answers it in full.)"
)
DATABASE_DOWN = (
    "(Parley cannot reach the database: your message is kept here and sent as soon as it "
    "is back.)\n"
)

# The same where the driver's code says why (a full disk, no connection to spare):
# known_failure's line, which no "cannot reach" would lead an operator to.
DATABASE_REFUSES = (
    "(The database cannot take your message now: {}. It is kept here and sent as soon as "
    "the database takes it.)\n"
)


def _waiting_notice(exc: StorageError) -> str:
    known = known_failure(exc, None)
    return DATABASE_REFUSES.format(known) if known else DATABASE_DOWN


class ConsoleSettings(AdapterSettings):
    # Your name in the console conversation's history.
    user: str = "local"
    # The console conversation's id: the same id continues the same conversation.
    chat: str = "console"

    @field_validator("user", "chat")
    @classmethod
    def _an_id(cls, value: str) -> str:
        # Blank, or longer than the database keeps: refused at start, not at the first message
        # (PostgreSQL's "value too long", exit 3; SQLite kept it whole).
        if (problem := id_problem(value)) is not None:
            raise ValueError(problem)
        return value


SPEC = AdapterSpec(
    name=PLATFORM,
    settings=ConsoleSettings,
    factory="adapters.console:create",
    summary="chat in the terminal (interactive, or lines piped to stdin)",
)


def create(host: AdapterHost, settings: ConsoleSettings) -> ConsoleAdapter:
    return ConsoleAdapter(host.intake, settings, stdin=_replacing(sys.stdin), stdout=sys.stdout)


def _replacing(stdin: TextIO) -> TextIO:
    """stdin, with what its encoding cannot decode read as U+FFFD: by default Python raises
    (the line was lost, and the console waited for ever) or, under the C locale, keeps each
    such byte as a lone surrogate."""
    if isinstance(stdin, io.TextIOWrapper):
        stdin.reconfigure(errors="replace")
    return stdin


class ConsoleAdapter:
    platform = PLATFORM
    operator_facing: Literal[True] = True  # OperatorFacing: the terminal is the operator's

    def __init__(
        self,
        intake: Intake,
        settings: ConsoleSettings,
        *,
        stdin: TextIO,
        stdout: TextIO,
        interactive: bool | None = None,
    ) -> None:
        self._intake = intake
        self._in = stdin
        self._out = stdout
        self._interactive = stdin.isatty() if interactive is None else interactive
        self.key = ConversationKey(PLATFORM, settings.chat)
        self.user = User(PLATFORM, settings.user, settings.user)
        self._gone = False  # the reader of stdout left
        self.unanswered = 0  # lines given up on: not answered in the time they may take

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gone and exc is None:  # the command's exit status says so (bot.cli: 141)
            raise BrokenPipeError("the reader of the console's output left")
        if self.unanswered and exc is None:  # never a status 0 with a question unanswered
            raise AdapterError(
                f"{self.unanswered} message(s) not answered in time (an earlier run's "
                "unfinished answer held the chat); they stay pending, the next run answers them"
            )

    async def is_admin(self, incoming: Incoming) -> bool:
        return True  # the person at the terminal runs the bot

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        if key != self.key:  # another console chat's answer (recover()): /history shows it
            async for _ in chunks:
                pass
            return
        if self._interactive:
            self._write("parley> ")
        try:
            async for chunk in chunks:
                # The answer quotes documents and the model: no escape sequence of theirs
                # reaches the terminal (a helper's review: OSC 52 wrote the clipboard).
                self._write(printable(chunk, lines=True))
        except asyncio.CancelledError:
            # A stop that outlasted its grace: the half answer stood there with no word of
            # what became of it (an operator's review).
            if not self._gone:
                self._write(CUT_BY_STOP)
            raise
        finally:
            # Also when the answer ends early (a stop cut it): the line is ended, so that what
            # comes next (the shell's prompt, a log line) does not start after its last word.
            if not self._gone:
                self._write("\n")

    async def run(self) -> None:
        try:
            await self._converse()
        except OutputAway:  # a prompt not shown: nobody reads any more
            return

    async def _converse(self) -> None:
        lines = _stdin_lines(self._in)
        later: deque[str | None] = deque()  # read while an answer streamed, not yet sent
        if self._interactive:
            self._write("Parley console. /help lists the commands; Ctrl-D ends the chat.\n")
        while True:
            if self._interactive:
                self._write("you> ")
            line = later.popleft() if later else await lines.get()
            if line is None:
                return
            text = line.strip()
            if text:
                recorded = await self._submit(self._incoming(text))
                if recorded is not None:  # the answer before the next prompt
                    await self._answered(recorded, lines, later)
            if self._gone:  # the lines after it are not read: nobody would see their answers
                return

    async def _answered(
        self, recorded: Recorded, lines: asyncio.Queue[str | None], later: deque[str | None]
    ) -> None:
        """Wait for the answer to `recorded`. A /stop read meanwhile is sent at once (it stops
        the answer), and so is a /reset unless lines read before it still wait (it would
        empty the context they are answered from); other lines wait their turn in `later`."""
        answered = asyncio.create_task(self._intake.wait_until_answered(recorded))
        try:
            while not answered.done() and (not later or later[-1] is not None):
                reading = asyncio.create_task(lines.get())
                await asyncio.wait({answered, reading}, return_when=FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()  # Queue.get gives up without taking a line
                    await asyncio.gather(reading, return_exceptions=True)
                    continue
                line = reading.result()
                text = "" if line is None else line.strip()
                if stops_a_reply(text) and (not later or text.split()[0] == "/stop"):
                    await self._submit(self._incoming(text))
                else:
                    later.append(line)
            if not await answered:
                self.unanswered += 1
                self._write("(No answer yet: it stays pending, and comes when it can.)\n")
        finally:
            answered.cancel()

    async def _submit(self, incoming: Incoming) -> Recorded | None:
        """Submit `incoming`, holding it while the database is out of reach: the terminal
        cannot send it again as a platform would (Telegram re-sends an update, a support
        client retries a 503), so the console does, under the same idempotency key (a try
        whose commit went through before its connection dropped is not recorded twice). It
        ended the console (and `parley run`'s other adapters) with the line lost."""
        delay = RETRY_FIRST_S
        said = False
        while True:
            try:
                return await self._intake.submit(incoming)
            except StorageError as exc:
                if not is_outage(exc):
                    # A refusal (a read-only or full database, a missing permission, a schema
                    # to migrate): no wait mends it, so the console ends with its one line.
                    raise
                if not said:
                    log.warning("console: message not recorded, tried again: %s", exc)
                    self._write(_waiting_notice(exc))
                    said = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    def _incoming(self, text: str) -> Incoming:
        return Incoming(
            key=self.key,
            user=self.user,
            text=text,
            idempotency_key=f"console:{uuid.uuid4().hex}",
        )

    def _write(self, text: str) -> None:
        if self._gone:
            raise OutputAway(PLATFORM)
        try:
            self._out.write(text)
            self._out.flush()
        except BrokenPipeError:
            self._gone = True
            raise OutputAway(PLATFORM) from None


def _stdin_lines(stream: TextIO) -> asyncio.Queue[str | None]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(LINES_AHEAD)

    def hand_over(line: str | None) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()  # waits while full

    def pump() -> None:
        try:
            for line in stream:
                hand_over(line)
            hand_over(None)
        except (RuntimeError, ValueError, OSError):  # the loop or the stream closed meanwhile
            pass

    threading.Thread(target=pump, name="parley-stdin", daemon=True).start()
    return queue
