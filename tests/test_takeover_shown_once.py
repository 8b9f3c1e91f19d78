"""A worker that takes over an answer a dead worker already showed (whole or half, in messages
it edits) shows the new answer once it is whole: each of those messages is edited once, to its
final text. Streamed into them, the chat saw the old answer cut back to its first words and
grow again (the crash suite's logs: a SIGKILL after an answer was shown in full, before it was
recorded). The real ConversationManager over SQLite, and the kit's Streamer over a surface
that records every send and edit, as a chat would show them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from adapters.kit.streamer import LEFTOVER, Pacing, Streamer
from backends.base import Chunk, GenerationRequest, estimate_tokens
from bot import phrases
from bot.conversation.context import ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import Summarizer
from bot.errors import BackendUnavailable
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.router import CommandRouter
from bot.storage.base import MessageKind
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import ScriptedBackend
from tests.test_kit_streamer import RecordingSurface

KEY = ConversationKey("test", "chat-1")
QUESTION = "what is the answer to everything"
ANSWER = "the answer is forty two, as the book says, and nobody knows the question"
OLD = "an earlier answer, shown in full before its worker died"
DEAD = "dead-worker"


class SurfaceSink:
    """A platform whose answers grow by edits (a Telegram group), through the kit's Streamer."""

    def __init__(self, surface: RecordingSurface) -> None:
        self.surface = surface

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        await Streamer(self.surface, Pacing(interval_s=0, limit=4096)).play(chunks)


class HangsAfter(ScriptedBackend):
    """Streams `words` words of ANSWER, says so (`streaming`), then waits for ever (a slow
    model a /stop ends)."""

    def __init__(self, words: int) -> None:
        super().__init__(lambda request: ANSWER, delay=lambda: 0.0)
        self.words = words
        self.streaming = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        sent = 0
        async for chunk in super().stream(request):
            if sent == self.words:
                self.streaming.set()
                await asyncio.Event().wait()
            sent += 1
            yield chunk


class FailsAfter(ScriptedBackend):
    """Streams `words` words of ANSWER, then fails as a model server that went away."""

    def __init__(self, words: int) -> None:
        super().__init__(lambda request: ANSWER, delay=lambda: 0.0)
        self.words = words

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        sent = 0
        async for chunk in super().stream(request):
            if sent == self.words:
                raise BackendUnavailable("the model server went away")
            sent += 1
            yield chunk


async def count(text: str) -> int:
    return estimate_tokens(text)


async def taken_over(
    tmp_path: Path,
    shown: dict[int, str],
    backend: ScriptedBackend,
    meanwhile: Callable[[ConversationManager], Awaitable[None]] | None = None,
) -> tuple[RecordingSurface, list[str]]:
    """A question whose answer a dead worker showed in the chat's messages `shown` (message
    id -> its text) and noted as its delivery's pieces, unrecorded; then a worker's
    ConversationManager answers it (`meanwhile` done as it does). What that worker did to
    the chat, and the answers SQL recorded."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    settings = Settings(
        database={"url": url},  # type: ignore[arg-type]
        conversation={"sweep_interval_s": 0, "delivery_grace_s": 0.001},  # type: ignore[arg-type]
    )
    await ensure_schema(url, True)
    store = SqlStore(create_engine(url))
    await store.start()
    surface = RecordingSurface(messages=dict(shown))
    cache = MemoryCache()
    context = ContextLoader(
        store, cache, Summarizer(backend, max_tokens=64, count_tokens=count), budget_tokens=2000
    )
    router = CommandRouter()
    register_core_commands(router)
    manager = ConversationManager(
        store=store, cache=cache, context=context, router=router, backend=backend,
        settings=settings.conversation, generation=settings.backend, count_tokens=count,
    )  # fmt: skip
    manager.attach(KEY.platform, SurfaceSink(surface))
    try:
        asked = Incoming(KEY, User("test", "u1", "Ada"), QUESTION, idempotency_key="m1")
        recorded = await store.record_incoming(asked, kind=MessageKind.CHAT, token_count=8)
        cid, mid = recorded.conversation_id, recorded.message_id
        # The dead worker: it began the delivery and noted the messages it showed, then died
        # (its lease given back here; it would lapse), the answer unrecorded.
        async with store.turn_lease(cid, DEAD, ttl_s=30, wait_s=5) as lease:
            assert await store.begin_delivery(lease, cid, mid, mid)
            if shown:
                # The surface's message ids are the pieces' indexes.
                await store.note_delivery(cid, lease.epoch, {index: index for index in shown})
        manager.start()
        assert await manager.recover() == 1
        if meanwhile is not None:
            await meanwhile(manager)
        assert await manager.wait_answered(recorded)
        await manager.wait_idle()
        history = await store.history(cid, 10)
    finally:
        await manager.aclose()
        await store.aclose()
    return surface, [m.content for m in history if m.role is Role.ASSISTANT]


@pytest.mark.parametrize("old", [OLD, OLD.split(",")[0]], ids=["whole", "half"])
async def test_a_taken_over_answer_is_edited_once_to_the_new_answer(
    tmp_path: Path, old: str
) -> None:
    """The dead worker's message showed an answer (whole, or half of it): the takeover edits
    it once, to the whole new answer, and never shows its first words alone."""
    backend = ScriptedBackend(lambda request: ANSWER, delay=lambda: 0.0)
    surface, answers = await taken_over(tmp_path, {0: old}, backend)
    assert surface.calls == [("edit", 0, ANSWER, False)]
    assert surface.messages == {0: ANSWER}
    assert answers == [ANSWER]


async def test_old_pieces_the_new_answer_does_not_need_are_edited_to_an_ellipsis(
    tmp_path: Path,
) -> None:
    backend = ScriptedBackend(lambda request: ANSWER, delay=lambda: 0.0)
    surface, answers = await taken_over(tmp_path, {0: OLD, 1: "its second message"}, backend)
    assert surface.calls == [("edit", 0, ANSWER, False), ("edit", 1, LEFTOVER, False)]
    assert answers == [ANSWER]


async def test_a_model_that_fails_mid_answer_in_a_takeover_is_cut_off_as_in_any_turn(
    tmp_path: Path,
) -> None:
    """The new answer's model fails after some words: the message is edited once, to those
    words and the cut-off note, which is what is recorded, as in a turn that took nothing
    over."""
    surface, answers = await taken_over(tmp_path, {0: OLD}, FailsAfter(words=3))
    shown = "the answer is" + f"\n\n{phrases.say(phrases.CUT_OFF, '')}"
    assert surface.calls == [("edit", 0, shown, False)]
    assert answers == [shown]


async def test_a_model_that_fails_before_its_first_word_in_a_takeover_says_so_once(
    tmp_path: Path,
) -> None:
    surface, answers = await taken_over(tmp_path, {0: OLD}, FailsAfter(words=0))
    sentence = phrases.say(BackendUnavailable("").user_message, "")
    assert surface.calls == [("edit", 0, sentence, False)]
    assert answers == [sentence]


async def test_a_takeover_stopped_by_the_user_shows_what_came_and_the_note_once(
    tmp_path: Path,
) -> None:
    """/stop while the new answer is made: the message is edited once, to what the model
    wrote and the note, which is what is recorded; the model's request is aborted."""
    backend = HangsAfter(words=3)

    async def stop(manager: ConversationManager) -> None:
        await backend.streaming.wait()
        await manager.submit(Incoming(KEY, User("test", "u1", "Ada"), "/stop", "m2"))

    surface, answers = await taken_over(tmp_path, {0: OLD}, backend, stop)
    stopped = "the answer is" + f"\n\n{phrases.say(phrases.STOPPED, '')}"
    assert [call for call in surface.calls if call[1] == 0] == [("edit", 0, stopped, False)]
    assert answers[0] == stopped
    assert backend.closed_early == 1


async def test_a_takeover_of_a_delivery_that_showed_nothing_streams_as_usual(
    tmp_path: Path,
) -> None:
    """Nothing to cut back: the new answer is sent as it comes and grows by edits."""
    backend = ScriptedBackend(lambda request: ANSWER, delay=lambda: 0.0)
    surface, answers = await taken_over(tmp_path, {}, backend)
    kinds = [kind for kind, *_ in surface.calls]
    assert kinds[0] == "send" and set(kinds[1:]) == {"edit"}, surface.calls
    texts = [text for _, _, text, _ in surface.calls]
    assert texts[0] != ANSWER and ANSWER.startswith(texts[0]) and texts[-1] == ANSWER
    assert answers == [ANSWER]
