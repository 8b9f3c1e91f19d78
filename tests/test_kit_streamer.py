"""The platform-neutral streamer against a recording surface (the seam), with a clock the
test moves: pacing, "latest text wins", final pieces, empty renderings, platform failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from adapters.kit.split import split_text
from adapters.kit.streamer import LEFTOVER, Pacing, Streamer
from bot.conversation.sink import done_showing, showing
from bot.errors import AdapterError, MessageGone

MARKUP_ONLY = {"```", ">", "#"}  # what this surface's renderer shows as nothing


@dataclass
class RecordingSurface:
    """Messages as a chat would show them; `fail_after` calls, it fails like a platform."""

    calls: list[tuple[str, int, str, bool]] = field(default_factory=list)
    messages: dict[int, str] = field(default_factory=dict)
    drafts: list[str] = field(default_factory=list)
    fail_after: int | None = None
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def shows(self, piece: str) -> bool:
        return piece.strip() not in MARKUP_ONLY

    async def send(self, piece: str, *, plain: bool) -> int:
        self._count("send", len(self.messages), piece, plain)
        self.messages[len(self.messages)] = piece
        return len(self.messages) - 1

    async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
        self._count("edit", ref, piece, plain)
        self.messages[ref] = piece

    async def draft(self, piece: str) -> None:
        self._count("draft", -1, piece, False)
        self.drafts.append(piece)

    def _count(self, kind: str, ref: int, piece: str, plain: bool) -> None:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise AdapterError("chat 1: Forbidden: bot was blocked by the user")
        assert plain or self.shows(piece), "never sent with nothing visible"
        self.calls.append((kind, ref, piece, plain))
        self.called.set()


class ManualClock:
    """Time moves only when the test says so; a sleeper waits for `advance`."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.sleeping = asyncio.Event()
        self._wake = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await self._wake.wait()
        self._wake.clear()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.sleeping.clear()
        self._wake.set()


async def chunks_of(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (chunk := await queue.get()) is not None:
        yield chunk


async def script(*chunks: str) -> AsyncIterator[str]:
    for chunk in chunks:
        yield chunk


async def test_updates_are_paced_and_the_latest_text_wins() -> None:
    surface, clock = RecordingSurface(), ManualClock()
    streamer = Streamer(surface, Pacing(1.0, 1000), clock=clock, sleep=clock.sleep)
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    playing = asyncio.create_task(streamer.play(chunks_of(queue)))
    queue.put_nowait("Hello")
    await surface.called.wait()  # the first update goes out at once
    clock.now += 0.25
    for chunk in (" there,", " how", " are you?"):  # read together while the update waits
        queue.put_nowait(chunk)
    await clock.sleeping.wait()
    assert clock.sleeps == [0.75]  # the rest of the interval
    clock.advance(0.75)
    queue.put_nowait(None)
    await playing
    assert [(kind, piece) for kind, _, piece, _ in surface.calls] == [
        ("send", "Hello"),
        ("edit", "Hello there, how are you?"),
    ]


async def test_complete_pieces_are_final_and_never_touched_again() -> None:
    surface = RecordingSurface()
    streamer = Streamer(surface, Pacing(0.0, 40))
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    playing = asyncio.create_task(streamer.play(chunks_of(queue)))
    answer = " ".join(f"Sentence number {n} is here." for n in range(12))
    for word in answer.split(" "):
        surface.called.clear()
        queue.put_nowait(word + " ")
        await surface.called.wait()  # each word changes the growing piece: one call at least
    queue.put_nowait(None)
    await playing
    pieces = split_text(answer, 40)
    assert len(pieces) > 3
    assert [surface.messages[i] for i in range(len(pieces))] == pieces
    # Piece n is finished before piece n + 1 is first sent, and never changed afterwards.
    refs = [ref for _, ref, _, _ in surface.calls]
    assert refs == sorted(refs)


async def test_a_piece_that_shows_nothing_waits_or_goes_as_plain_text() -> None:
    surface = RecordingSurface()
    streamer = Streamer(surface, Pacing(0.0, 1000))
    await streamer.play(script("```"))
    assert surface.calls == [("send", 0, "```", True)]  # final: as typed

    surface = RecordingSurface()
    streamer = Streamer(surface, Pacing(0.0, 1000))
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    playing = asyncio.create_task(streamer.play(chunks_of(queue)))
    queue.put_nowait("> ")  # nothing to show yet: no call
    queue.put_nowait(None)
    await playing
    assert [plain for *_, plain in surface.calls] == [True]


async def test_drafts_show_the_growing_piece_and_messages_the_final_ones() -> None:
    surface = RecordingSurface()
    streamer = Streamer(surface, Pacing(0.0, 1000), drafts=surface)
    await streamer.play(script("One", " two", " three."))
    kinds = [kind for kind, *_ in surface.calls]
    assert kinds[-1] == "send" and set(kinds[:-1]) <= {"draft"}
    assert surface.messages == {0: "One two three."}


async def test_a_platform_failure_ends_the_showing_but_the_answer_is_read_to_the_end() -> None:
    surface = RecordingSurface(fail_after=1)
    streamer = Streamer(surface, Pacing(0.0, 1000))
    read: list[str] = []

    async def model() -> AsyncIterator[str]:
        for word in ["a", " b", " c", " d"]:
            read.append(word)
            yield word

    await streamer.play(model())
    assert read == ["a", " b", " c", " d"]
    assert len(surface.calls) == 1  # nothing after the failure


async def test_the_models_error_reaches_the_caller() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "partial"
        raise RuntimeError("model died")

    with pytest.raises(RuntimeError, match="model died"):
        await Streamer(RecordingSurface(), Pacing(0.0, 1000)).play(broken())


@dataclass
class KeptPieces:
    """The core's record of what an answer showed (bot.conversation.sink.Shown)."""

    pieces: dict[int, str | int] = field(default_factory=dict)
    noted: list[tuple[int, str | int]] = field(default_factory=list)
    # What `deleted` was told the chat still shows; None: not called.
    still_shown: str | None = None

    async def showed(self, index: int, ref: str | int) -> bool:
        self.pieces[index] = ref
        self.noted.append((index, ref))
        return True

    async def may_show(self) -> None:
        return None  # the answer stays this worker's (tests/test_lease_takeover.py: when not)

    def deleted(self, still_shown: str = "") -> None:
        self.still_shown = still_shown  # and tests/test_answer_deleted_in_chat.py


async def once(text: str) -> AsyncIterator[str]:
    yield text


async def test_each_sent_piece_is_handed_to_the_core_as_soon_as_it_is_known() -> None:
    surface = RecordingSurface()
    kept = KeptPieces()
    token = showing(kept)
    try:
        streamer = Streamer(surface, Pacing(0.0, 40, len))
    finally:
        done_showing(token)
    await streamer.play(once("one two three four five six seven. " * 4))
    assert kept.noted == [(i, i) for i in range(len(surface.messages))]
    assert len(kept.noted) >= 2


async def test_a_cut_off_answer_is_finished_by_editing_its_own_pieces() -> None:
    surface = RecordingSurface(messages={0: "half of the fir", 1: "and more of the old", 2: "x"})
    kept = KeptPieces(pieces={0: 0, 1: 1, 2: 2})  # what the dead worker showed
    token = showing(kept)
    try:
        streamer = Streamer(surface, Pacing(0.0, 4096, len))
    finally:
        done_showing(token)
    await streamer.play(once("the whole new answer"))
    assert [c[0] for c in surface.calls] == ["edit", "edit", "edit"]  # nothing sent anew
    assert surface.messages == {0: "the whole new answer", 1: LEFTOVER, 2: LEFTOVER}
    assert kept.noted == []


async def test_the_models_error_reaches_the_caller_even_once_the_answer_is_deleted() -> None:
    """A model that fails while the edit that finds the answer deleted (MessageGone) is on
    its way: the reader is already done, and its error is still the core's, not dropped."""
    editing, failed = asyncio.Event(), asyncio.Event()

    class GoneOnEdit(RecordingSurface):
        async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
            editing.set()
            await failed.wait()  # the model fails while this edit is in flight
            raise MessageGone("chat 1: Message to edit not found")

    surface = GoneOnEdit()

    async def broken() -> AsyncIterator[str]:
        yield "partial"
        await surface.called.wait()  # sent: the next text is an edit
        yield " more"
        await editing.wait()
        failed.set()
        raise RuntimeError("model died")

    kept = KeptPieces()
    token = showing(kept)
    try:
        streamer = Streamer(surface, Pacing(0.0, 1000))
    finally:
        done_showing(token)
    with pytest.raises(RuntimeError, match="model died"):
        await streamer.play(broken())


CUT = "one two three. four five six seven"  # the first piece at a limit of 40


@pytest.mark.parametrize(("gone", "still_shown"), [(0, ""), (1, CUT), (2, None)])
async def test_a_deleted_message_leaves_the_core_the_pieces_before_it(
    gone: int, still_shown: str | None
) -> None:
    """Piece `gone`'s message deleted in the chat (its edit refused): the core is told the
    text of the pieces before it, which the chat still shows (none for the first piece)."""
    sent = [asyncio.Event(), asyncio.Event()]  # the first message, the second

    class GoneOnEdit(RecordingSurface):
        async def send(self, piece: str, *, plain: bool) -> int:
            ref = await super().send(piece, plain=plain)
            sent[ref].set()
            return ref

        async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
            if ref == gone:
                raise MessageGone("chat 1: Message to edit not found")
            await super().edit(ref, piece, plain=plain)

    async def growing() -> AsyncIterator[str]:
        # Each piece a message before the text that edits it comes.
        yield "one two three."
        await sent[0].wait()
        yield " four five six seven eight nine ten"
        await sent[1].wait()
        yield " eleven."

    kept = KeptPieces()
    token = showing(kept)
    try:
        streamer = Streamer(GoneOnEdit(), Pacing(0.0, 40))
    finally:
        done_showing(token)
    await streamer.play(growing())
    assert kept.still_shown == still_shown
