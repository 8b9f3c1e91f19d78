"""A model server that does not play fair, against the OpenAI-compatible backend: what it
sends is bounded (a line that never ends, a reply that ignores max_tokens, a huge error
body), what is not an event stream is not read as one, a finish reason sent early cuts
nothing, and a /tokenize that hangs holds no message for long. Each was found by
a hostile review (2026-12-05) with a stand-in server on a local port."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backends.base import FINISH_LENGTH, Chunk
from backends.openai_compat import MAX_CHARS_PER_TOKEN, MIN_REPLY_CHARS, OpenAICompatBackend
from backends.resilience import ResilientBackend
from bot.errors import BackendError
from tests.test_rvb_backends import (
    DONE,
    NEVER,
    Answer,
    StandIn,
    ask,
    chunk,
    collect,
    running,
    settings_for,
    usage_event,
)

MB = 2**20


def endless(piece: bytes, total: int, *, status: int = 200, kind: str = "text/event-stream",
            head: bytes = b"") -> Answer:  # fmt: skip
    """An answer of `head`, then `piece` until `total` bytes are sent."""

    async def answer(body: dict[str, object]) -> Response:
        async def pieces() -> AsyncIterator[bytes]:
            yield head
            for _ in range(total // len(piece)):
                yield piece

        return StreamingResponse(pieces(), status_code=status, media_type=kind)

    return answer


async def reply_of(stand_in: StandIn, **settings: object) -> list[Chunk]:
    """One reply from the stand-in, through a backend of its own."""
    async with running(stand_in) as url:
        backend = OpenAICompatBackend(settings_for(url, **settings))
        try:
            return await collect(backend, ask())
        finally:
            await backend.aclose()


async def peak_of_collecting(stand_in: StandIn) -> tuple[int, BaseException | None]:
    """The highest memory Python held while one reply was read, and the error it ended in."""
    tracemalloc.start()
    try:
        await reply_of(stand_in)
        failed: BaseException | None = None
    except BackendError as exc:
        failed = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, failed


async def test_a_line_that_never_ends_is_refused_before_it_fills_memory() -> None:
    """`data: ` and then 100 MB without a newline: the line was held whole (2 GB in five
    seconds in the review, the process killed for memory, every user with it)."""
    stand_in = StandIn(endless(b"x" * 65_536, 100 * MB, head=b"data: "))
    peak, failed = await peak_of_collecting(stand_in)
    assert isinstance(failed, BackendError) and "line over" in str(failed)
    assert peak < 30 * MB


async def test_an_error_answer_is_read_only_as_far_as_its_limit() -> None:
    """A 500 with a 100 MB body was read whole, on each of four tries."""
    stand_in = StandIn(endless(b"y" * 65_536, 100 * MB, status=500, kind="text/plain"))
    peak, failed = await peak_of_collecting(stand_in)
    assert isinstance(failed, BackendError) and "500" in str(failed)
    assert peak < 30 * MB


async def test_a_reply_that_ignores_max_tokens_is_cut_at_its_limit() -> None:
    """A server that ignores max_tokens streamed 10 MB to a user who asked for 8 tokens; it
    was shown and stored whole. The text stops at the limit and ends as a cut reply."""
    stand_in = StandIn()
    stand_in.answers = [stand_in.stream(*[chunk("z" * 1000) for _ in range(200)], hold=True)]
    chunks = await reply_of(stand_in)
    text = "".join(c.text for c in chunks)
    assert len(text) == max(MIN_REPLY_CHARS, 8 * MAX_CHARS_PER_TOKEN)
    assert chunks[-1].finish_reason == FINISH_LENGTH


async def test_an_html_page_is_not_read_as_the_models_reply() -> None:
    """A proxy's 200 HTML page with a `data:` line in it was shown as the model's answer."""
    page = b'<html><body>\ndata: {"choices": [{"delta": {"content": "INJECTED"}}]}\n\n</body>'
    stand_in = StandIn(endless(page, len(page), kind="text/html"))
    with pytest.raises(BackendError, match="not an event stream"):
        await reply_of(stand_in)


def slow_stream(stand_in: StandIn, *events: str | float) -> Answer:
    """A 200 event stream of `events`, a number among them a pause of that many seconds."""

    async def answer(body: dict[str, object]) -> Response:
        async def body_iter() -> AsyncIterator[str]:
            for event in events:
                if isinstance(event, float):
                    await asyncio.sleep(event)
                else:
                    yield event

        return StreamingResponse(body_iter(), media_type="text/event-stream")

    return answer


async def test_a_finish_reason_sent_early_does_not_cut_what_follows_it() -> None:
    """Some servers set the finish reason on an early chunk and go on (Open WebUI,
    open-webui#16377); the reply is read on to its end within gap_s (the review of a change
    that waited only one second after a finish reason and cut such replies short)."""
    stand_in = StandIn()
    late = {"first_token_s": 10.0, "gap_s": 10.0, "total_s": 30.0, "connect_s": 2.0}
    stand_in.answers = [
        slow_stream(
            stand_in, chunk("Step one.", finish="stop"), 1.5, chunk(" Step two."), 1.5,
            usage_event(), DONE,
        )
    ]  # fmt: skip
    chunks = await reply_of(stand_in, timeouts=late)
    assert "".join(c.text for c in chunks) == "Step one. Step two."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


async def test_a_tokenize_that_hangs_is_not_asked_for_every_message() -> None:
    """Every message is counted before it is recorded. With /tokenize hanging, each count
    waited gap_s, four at a time: 12 users were recorded 3, 6 and 9 s late in the review,
    and 40 would have waited minutes. One failure now makes the counts estimates a while."""
    tokenized: list[str] = []
    hang = asyncio.Event()

    async def tokenize(request: Request) -> Response:
        prompt = str((await request.json()).get("prompt", ""))
        tokenized.append(prompt)
        if hang.is_set():
            await stand_in.release.wait()
        return JSONResponse({"tokens": list(range(len(prompt.split())))})

    stand_in = StandIn()
    stand_in.app.routes.append(Route("/tokenize", tokenize, methods=["POST"]))
    async with running(stand_in) as url:
        settings = settings_for(url)
        backend = ResilientBackend(OpenAICompatBackend(settings), settings)
        try:
            await backend.start()
            hang.set()
            texts = [f"message number {n} from a user" for n in range(12)]
            async with asyncio.timeout(NEVER):
                counts = await asyncio.gather(*(backend.count_tokens([t]) for t in texts))
            after = len(tokenized)
            await backend.count_tokens(["one more"])  # within the pause: not asked
        finally:
            await backend.aclose()
    assert all(count[0] > 0 for count in counts)  # estimates
    assert after <= 1 + settings.max_count_requests  # the start-up probe, one slot's worth
    assert len(tokenized) == after


async def test_an_emoji_cut_between_two_events_arrives_whole() -> None:
    """A server that cuts a character outside the Basic Multilingual Plane between two events
    (its JSON's "\\ud83d" in one, "\\ude00" in the next) gave each delta half a character: a
    lone surrogate, which no platform can encode (Telegram's UTF-16 count raised, the turn
    failed and ended in the apology; a helper's review). The halves are joined; a half with
    no partner, here or at the reply's end, is the replacement character."""
    stand_in = StandIn()
    stand_in.answers = [
        stand_in.stream(
            chunk("Hi \ud83d"), chunk("\ude00 and \ude01 and \ud83d"), chunk("x \ud83d"),
            usage_event(), DONE,
        )
    ]  # fmt: skip
    chunks = await reply_of(stand_in)
    texts = [c.text for c in chunks if c.text]
    assert "".join(texts) == "Hi \U0001f600 and \ufffd and \ufffdx \ufffd"
    for text in texts:
        text.encode("utf-16-le")  # whole characters only: a lone surrogate raises here
