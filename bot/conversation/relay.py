"""Streaming an answer to a platform while keeping it for the record: a backend stream
relayed as text deltas (`Collected`), and a stream that /stop and /reset can end (`until`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from backends.base import Chunk, Usage
from bot import phrases
from bot.errors import BackendError
from bot.skills.router import Say

log = logging.getLogger(__name__)


async def until(
    stop: asyncio.Event,
    chunks: AsyncGenerator[str, None],
    stopped: Callable[[], Awaitable[str]],
) -> AsyncGenerator[str, None]:
    """`chunks` until `stop` is set; then the note from `stopped()`, and `chunks` is closed
    (which aborts the model request behind it)."""
    stopping = asyncio.create_task(stop.wait())
    step: asyncio.Future[str] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(chunks))
            await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                log.info("reply stopped by the user")
                step.cancel()  # before the note: no chunk may be taken but not shown
                await asyncio.gather(step, return_exceptions=True)
                if not step.cancelled() and step.exception() is None:
                    yield step.result()  # it arrived while the cancellation did
                yield await stopped()
                return
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        stopping.cancel()
        if step is not None and not step.done():  # the generator must be idle to be closed
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
        await chunks.aclose()


async def note_line(say: Say, sentence: str) -> str:
    """A note after an answer ("[Stopped.]"), in the user's language."""
    return f"\n\n{await say(sentence)}"


class Collected:
    """Relays a backend stream to a sink while keeping the text and usage for the record."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.notice: str | None = None

    def cut_off(self, note: str) -> None:
        self.parts.append(note)

    async def relay(self, stream: AsyncGenerator[Chunk, None]) -> AsyncGenerator[str, None]:
        """Text deltas for the sink. A failure after text was shown ends the reply with a
        short note instead of an error, so the user never sees the same text twice."""
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    self.usage = chunk.usage
                if chunk.notice:
                    self.notice = chunk.notice
                if chunk.text:
                    self.parts.append(chunk.text)
                    yield chunk.text
        except BackendError as exc:
            if not self.parts:
                raise
            log.warning("reply cut off after %d chunks: %s", len(self.parts), exc)
            note = await note_line(self.say, phrases.CUT_OFF)
            self.parts.append(note)
            yield note
        else:
            if self.notice:  # shown, not stored: it is about the answer, not part of it
                yield f"\n\n({self.notice})"
        finally:
            await stream.aclose()  # aborts the request if the sink stopped early
