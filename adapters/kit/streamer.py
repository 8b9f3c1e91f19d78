"""Shows one streamed answer on any platform: throttled, "latest text wins".

The model's deltas are read by their own task into a buffer, so the model never waits for
the platform; the buffer is shown at most once per `interval_s` (nothing queues up: each
update shows the text as it is then). The answer is split (`split`) with the platform's
limit; a piece that is complete (every piece but the last) is sent, or edited to its final
text, as soon as it is complete and never touched again. The growing last piece is a draft
where the platform has drafts, else a message that is edited as it grows.

Nothing is ever sent with empty visible text: a growing piece that shows nothing yet (a lone
"```" or "> ") waits for more text; a final piece that shows nothing is sent as the plain
text it is. So the final messages show the whole recorded answer.

The platform is a `Surface` (send a piece -> a message reference, edit one) and optionally
`Drafts`. Where the core keeps what is shown (`bot.conversation.sink.current_shown`), each
new message's reference is handed to it as soon as it is known, and the pieces an earlier,
cut-off attempt at the same answer showed are edited instead of sent again: a turn cut by a
crash is finished in its own messages (pieces of the old attempt beyond the new answer are
edited to an ellipsis).

Before each send or edit the core confirms that the answer is still this worker's
(`Shown.may_show`), and the surface again right before the request, after any wait for a
rate limit (`bot.conversation.sink.still_showing`): a process that was paused past its lease
stops there, and never overwrites what the worker that took its answer over shows.

The platform's refusals are `AdapterError`s: they end the showing, never the reading, so
the answer is still read to the end and recorded, and the log says why the chat did not get
it. One refusal is told to the core: a message of the answer deleted in the chat while it was
shown (`MessageGone`: a moderator), for the answer to be recorded as a deleted message is
(`Shown.deleted`, told the text of the answer's first message where a later one was deleted);
nothing more of its text is kept then, so the playing ends there and the model's stream is
closed (its request aborted) instead of read to the end. A refused draft is the
exception: a draft only previews, so the answer goes on growing as a message instead. A
platform that does not answer (`PlatformAway`: no connection, a timeout, a server error) ends
the playing at once, the model's stream closed:
the adapter makes its turn wait for the platform, and the answer is made again and finished
in its own messages once the platform is back, rather than recorded as shown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

from bot.conversation.sink import Shown, current_shown
from bot.errors import AdapterError, MessageGone, PlatformAway

from .split import Length, Reopen, Splitter

log = logging.getLogger(__name__)

Ref = TypeVar("Ref")
# What a piece left over from a cut-off attempt shows once the new answer is shorter.
LEFTOVER = "…"
# The text of a piece an earlier attempt showed: unknown, so it is always edited.
_UNKNOWN = "\x00"


class Surface(Protocol[Ref]):
    """One chat of one platform, as the streamer sees it. A piece is Markdown within the
    limit; `plain` asks for it as typed, without rendering."""

    def shows(self, piece: str) -> bool:
        """Whether the rendered piece has visible text (Telegram refuses empty messages)."""
        ...

    async def send(self, piece: str, *, plain: bool) -> Ref: ...

    async def edit(self, ref: Ref, piece: str, *, plain: bool) -> None: ...


@runtime_checkable
class Drafts(Protocol):
    """A platform that shows a growing answer as a draft (Telegram's private chats)."""

    async def draft(self, piece: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Pacing:
    interval_s: float  # between visible updates (Telegram: 1 s private, 3 s in groups)
    limit: int  # of one message, counted by `length`
    length: Length = len
    # What a piece leaves open, written again at the start of the next (Discord's spoilers).
    reopen: Reopen | None = None
    # The whole answer as its final messages show it (Discord: a spoiler marker the model
    # never closed shown as written, where it hid the rest while the answer streamed).
    settle: Callable[[str], str] | None = None


@dataclass
class _Buffer:
    parts: list[str] = field(default_factory=list)
    done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True, slots=True)
class _Shown(Generic[Ref]):
    ref: Ref
    piece: str


class Streamer(Generic[Ref]):
    def __init__(
        self,
        surface: Surface[Ref],
        pacing: Pacing,
        *,
        drafts: Drafts | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._surface = surface
        self._pacing = pacing
        self._drafts = drafts
        self._clock = clock
        self._sleep = sleep
        self._splitter = Splitter(pacing.limit, length=pacing.length, reopen=pacing.reopen)
        self._shown: dict[int, _Shown[Ref]] = {}  # piece index -> its message
        self._putting = 0  # the index of the piece last sent or edited
        # The core's record of what is shown (None: a sink outside a turn, or a test).
        self._kept: Shown | None = current_shown()
        if self._kept is not None:
            for index, ref in self._kept.pieces.items():
                self._shown[index] = _Shown(ref, _UNKNOWN)  # type: ignore[arg-type]
        self._draft = ""
        self._broken = False
        self._gone = False  # deleted in the chat, and the core told: nothing more to read
        self.updates = 0  # calls that changed what the chat sees

    async def play(self, chunks: AsyncIterator[str]) -> None:
        buffer = _Buffer()
        reader = asyncio.create_task(_read(chunks, buffer))
        try:
            await self._follow(buffer)
            # The model's errors belong to the core, also one that came before the deletion
            # was seen (a reader already done is never cancelled: its error would be lost).
            if not self._gone or reader.done():
                await reader
        finally:
            if not reader.done():
                reader.cancel()
            # Retrieved either way: a reader that failed too (the turn's Superseded, raised
            # to both) must not be reported as "exception never retrieved".
            await asyncio.gather(reader, return_exceptions=True)
        await self._guarded(self._show_final, buffer.text)

    async def _follow(self, buffer: _Buffer) -> None:
        last = float("-inf")
        while True:
            await buffer.changed.wait()
            buffer.changed.clear()
            if buffer.done:
                return
            pause = last + self._pacing.interval_s - self._clock()
            if pause > 0:
                await self._sleep(pause)
            if buffer.done:
                return
            last = self._clock()
            await self._guarded(self._show_partial, buffer.text)
            if self._gone:
                return  # the reader is cancelled: the model's request is aborted

    async def _guarded(self, show: Callable[[str], Awaitable[None]], text: str) -> None:
        if self._broken:
            return
        try:
            await show(text)
        except PlatformAway:
            raise  # not a refusal: the turn waits for the platform
        except AdapterError as exc:
            self._broken = True
            log.warning("reply not shown: %s", exc)
            if isinstance(exc, MessageGone) and self._kept is not None:
                # Recorded as a deleted message is (after what the chat still shows of it),
                # never shown again.
                self._kept.deleted(self._still_shown())
                self._gone = True

    def _still_shown(self) -> str:
        """The first piece's text, where a later piece's message was deleted (a moderator
        deleted a later message of a long answer): the core keeps it where it can still
        learn of the first message's deletion. Only the first: the deletion of a message
        between the two is learned by no one. "" where the first was deleted, or its text is
        not known (an earlier attempt's)."""
        first = self._shown.get(0)
        if self._putting == 0 or first is None or first.piece in (_UNKNOWN, LEFTOVER):
            return ""
        return first.piece

    def _split(self, text: str) -> list[str]:
        return self._splitter.split(text)

    async def _show_partial(self, text: str) -> None:
        *complete, growing = self._split(text) or [""]
        for i, piece in enumerate(complete):
            await self._put(i, piece, final=True)
        if not growing or not self._surface.shows(growing):
            return  # nothing visible yet: wait for more text
        if self._drafts is not None:
            if growing != self._draft:
                await self._may_show()
                try:
                    await self._drafts.draft(growing)
                except PlatformAway:
                    raise
                except AdapterError as exc:
                    # A draft only previews: without drafts the answer grows as a message.
                    self._drafts = None
                    log.warning("drafts refused, the answer grows as a message: %s", exc)
                    return
                self._draft = growing
                self.updates += 1
        else:
            await self._put(len(complete), growing, final=False)

    async def _show_final(self, text: str) -> None:
        pieces = self._split(self._pacing.settle(text) if self._pacing.settle else text)
        for i, piece in enumerate(pieces):
            await self._put(i, piece, final=True)
        for i in sorted(self._shown):
            if i >= len(pieces) and self._shown[i].piece != LEFTOVER:
                await self._put(i, LEFTOVER, final=True)

    async def _put(self, index: int, piece: str, *, final: bool) -> None:
        """Sends or edits the message of piece `index`; a final piece that renders to
        nothing visible goes as plain text."""
        shown = self._shown.get(index)
        if shown is not None and shown.piece == piece:
            return
        plain = final and not self._surface.shows(piece)
        await self._may_show()
        self._putting = index  # the piece a MessageGone is about (_still_shown)
        if shown is None:
            ref = await self._surface.send(piece, plain=plain)
            if self._kept is not None:
                await self._kept.showed(index, ref)  # type: ignore[arg-type]
        else:
            ref = shown.ref
            await self._surface.edit(ref, piece, plain=plain)
        self._shown[index] = _Shown(ref, piece)
        self.updates += 1

    async def _may_show(self) -> None:
        # A process paused past its lease (SIGSTOP, a frozen VM) must not overwrite, once it
        # runs again, the answer of the worker that took this one over: the core says
        # (raising) when the answer is no longer this worker's. The surface asks again after
        # its rate limit's wait (`still_showing`), right before the request.
        if self._kept is not None:
            await self._kept.may_show()


async def _read(chunks: AsyncIterator[str], buffer: _Buffer) -> None:
    try:
        async for chunk in chunks:
            buffer.parts.append(chunk)
            buffer.changed.set()
    finally:
        buffer.done = True
        buffer.changed.set()
