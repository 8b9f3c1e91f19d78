"""Streaming an answer to a platform while keeping it for the record: a backend stream
relayed as text deltas (`Collected`), and a stream that /stop and /reset can end (`until`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

from backends.base import FINISH_LENGTH, Chunk, Usage
from bot import phrases
from bot.errors import BackendError
from bot.skills.router import Say

log = logging.getLogger(__name__)

STOP_WATCHER = "reply stop watcher"  # the name of `until`'s task that waits for /stop


async def until(
    stop: asyncio.Event,
    chunks: AsyncGenerator[str, None],
    stopped: Callable[[], Awaitable[str]],
) -> AsyncGenerator[str, None]:
    """`chunks` until `stop` is set; then the note from `stopped()`, and `chunks` is closed
    (which aborts the model request behind it).

    Each chunk is awaited directly in the reading task, with no task or wait set of its own
    (a long answer streams hundreds of them). Setting `stop` cancels the reading task only
    while it waits for the next chunk, the way `asyncio.timeout` does; a chunk the task had
    already taken is shown, one the cancellation cut off is neither shown nor kept."""
    reader: asyncio.Task[object] | None = None  # set only while waiting for a chunk
    interrupted: asyncio.Task[object] | None = None  # the task cancelled by `stop`

    def on_stop(_: object) -> None:
        nonlocal interrupted
        if reader is not None and interrupted is None:
            interrupted = reader
            reader.cancel()

    stopping = asyncio.create_task(stop.wait(), name=STOP_WATCHER)
    stopping.add_done_callback(on_stop)
    try:
        while not stop.is_set():
            reader = asyncio.current_task()
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if interrupted is None:
                    raise
                outside = interrupted.uncancel() > 0  # ours is taken back either way
                interrupted = None
                if outside:
                    raise  # cancelled from outside as well: not ours to swallow
                break
            finally:
                reader = None
            yield chunk
        log.info("reply stopped by the user")
        yield await stopped()
    finally:
        stopping.remove_done_callback(on_stop)
        stopping.cancel()
        if interrupted is not None and interrupted.cancelling():
            # The chunk source swallowed our cancellation: take the request back, or a later
            # timeout or task group in this task would take it for its own.
            interrupted.uncancel()
        await chunks.aclose()


async def note_line(say: Say, sentence: str) -> str:
    """A note after an answer ("[Stopped.]"), in the user's language."""
    return f"\n\n{await say(sentence)}"


class Collected:
    """Relays a backend stream to a sink while keeping the text and usage for the record."""

    def __init__(
        self, say: Say, *, gone_with_stop: Callable[[BackendError], bool] = lambda exc: False
    ) -> None:
        self.say = say
        # True for a failure that went with the process's stop: raised even after text was
        # shown (the turn ends as in a crash), not ended with a cut-off note.
        self._gone_with_stop = gone_with_stop
        self.parts: list[str] = []
        self.usage: Usage | None = None
        self.notice: str | None = None

    def cut_off(self, note: str) -> None:
        self.parts.append(note)

    async def relay(self, stream: AsyncGenerator[Chunk, None]) -> AsyncGenerator[str, None]:
        """Text deltas for the sink. A failure after text was shown ends the reply with a
        short note instead of an error, so the user never sees the same text twice."""
        # Blanks before the first text: shown with it, or never. None once text was shown.
        held: str | None = ""
        finish_reason: str | None = None
        self.usage = self.notice = None  # a second try (ContextTooLong) starts afresh
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    self.usage = chunk.usage
                finish_reason = chunk.finish_reason or finish_reason
                if chunk.notice:
                    self.notice = chunk.notice
                if chunk.text:
                    self.parts.append(chunk.text)
                    if held is None:
                        yield chunk.text
                    elif chunk.text.strip():
                        yield held + chunk.text
                        held = None
                    else:
                        held += chunk.text
        except BackendError as exc:
            if held is not None or self._gone_with_stop(exc):  # the caller's sentence, a retry
                self.parts.clear()
                raise
            log.warning("reply cut off after %d chunks: %s", len(self.parts), exc)
            note = await note_line(self.say, phrases.CUT_OFF)
            self.parts.append(note)
            yield note
        except Exception:
            # A bug (no BotError): went on through the platform's delivery, taken for the
            # platform failing, and the user got no answer, or text without its note.
            log.exception("reply failed after %d chunks", len(self.parts))
            if held is None:
                self.parts.append(await note_line(self.say, phrases.CUT_OFF))
            else:
                self.parts = [await self.say(phrases.GENERIC)]
                self.usage = None  # the record counts the sentence
            yield self.parts[-1]
        else:
            if held is not None:  # nothing a platform would show
                self.parts = [await self.say(phrases.EMPTY_ANSWER)]
                self.usage = None  # the record counts the sentence, not the blanks
                yield self.parts[0]
            elif finish_reason == FINISH_LENGTH:
                # The answer ran into the token limit (backend.max_tokens), most often in the
                # middle of a word: an ellipsis says it goes on, here and in the record.
                self.parts.append(phrases.TRUNCATED)
                yield phrases.TRUNCATED
            if self.notice:  # shown, not stored: it is about the answer, not part of it
                yield f"\n\n({self.notice})"
        finally:
            await stream.aclose()  # aborts the request if the sink stopped early
