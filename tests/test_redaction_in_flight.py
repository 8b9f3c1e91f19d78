"""A message deleted while a turn of its conversation is in flight stays out of the context.

A deletion (Discord's message delete: `ConversationManager.redact`) replaces the text in SQL
and drops the conversation's cached window. A turn in flight meanwhile holds the window it
loaded before, with the text still in it, and wrote it back when it finished: the window
passed the staleness check (the boundary and the last reply matched SQL's), and every later
prompt carried the deleted text until the window rolled over or expired a day later, in
process or in Redis, on every worker (a review). The turns are held at the two points where
that happened: after the turn recorded its answer (the deleted message may be the one it
answers), and while the model streams (an earlier message, already in the window).

A turn that rolls its window over folds the turns of the window it loaded into the summary,
a model call: a deletion during it went into SQL's summary, and every later prompt carried
it until the next fold (a review). The summary's model call is held there.

A message an earlier roll-over had folded into the summary stayed there once deleted, in
every later prompt (a review): the deletion drops the summary, and the window is folded
again from the messages since the /reset.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from backends.base import Chunk, GenerationRequest, estimate_tokens
from bot.conversation.context import FOLD_TRIES, ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import SUMMARY_INSTRUCTION, Summarizer
from bot.errors import ContextTooLong
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.router import CommandRouter
from bot.storage import keys
from bot.storage.base import Cache, MessageKind
from bot.storage.cache import build_cache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.sql_store import DELETED_STUB, SqlStore
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend

KEY = ConversationKey("test", "deleted-in-flight")
ADA = User("test", "u1", "Ada")
SECRET = "sk-SECRET-123"
HOLD = "(held)"
WAIT_S = 10


class HeldAfterRecord:
    """The Store seam: once `armed`, the next recorded answer is held (after its record is
    committed, before the turn writes its window to the cache) until `release` is set."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.armed = False
        self.recorded = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def record_reply(self, *args: Any, **kwargs: Any) -> Any:
        stored = await self.inner.record_reply(*args, **kwargs)
        if self.armed:
            self.armed = False
            self.recorded.set()
            await self.release.wait()
        return stored


class HeldModel(ScriptedBackend):
    """Answers "Noted."; the answer to a message with HOLD in it waits for `release`."""

    def __init__(self) -> None:
        super().__init__(lambda request: "Noted.")
        self.streaming = asyncio.Event()
        self.release = asyncio.Event()
        self.held: list[str] = []  # the history of the request it holds

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if HOLD in request.messages[-1].content:
            self.held = [m.content for m in request.messages if m.role is not Role.SYSTEM]
            self.streaming.set()
            await self.release.wait()
        async for chunk in super().stream(request):
            yield chunk


class HeldSummary(HeldModel):
    """Answers "Noted."; a summary keeps the token it reads (as a model told to keep facts
    does), and the first summary asked for waits for `release`. With `refuse`, the next
    answer is refused as too long for the model's context (the manager shrinks once)."""

    def __init__(self) -> None:
        super().__init__()
        self.summarising = asyncio.Event()
        self.refuse = False

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if request.messages[0].content.startswith(SUMMARY_INSTRUCTION[:20]):
            if not self.summarising.is_set():
                self.summarising.set()
                await self.release.wait()
            self.requests.append(request)
            read = request.messages[-1].content
            text = f"They shared the token {SECRET}." if SECRET in read else "They talked."
            yield Chunk(text=text)
            return
        if self.refuse:
            self.refuse = False
            raise ContextTooLong("the prompt is longer than the model's context")
        async for chunk in super().stream(request):
            yield chunk


@dataclass
class Worker:
    manager: ConversationManager
    store: HeldAfterRecord
    sink: CollectingSink
    cache: Cache


async def count(text: str) -> int:
    return estimate_tokens(text)


@asynccontextmanager
async def worker(
    url: str, redis_url: str | None, prefix: str, backend: HeldModel, budget_tokens: int = 2000
) -> AsyncIterator[Worker]:
    """One Parley worker's turn pipeline on `url`, its windows in Redis where `redis_url`
    is given (shared by the workers of a test), else in process."""
    redis = {"url": redis_url, "key_prefix": prefix} if redis_url else {}
    settings = Settings(database={"url": url}, redis=redis)  # type: ignore[arg-type]
    await ensure_schema(url, True)
    store = SqlStore(create_engine(url))
    await store.start()
    held = HeldAfterRecord(store)
    cache = build_cache(settings.redis)
    summarizer = Summarizer(backend, max_tokens=64, count_tokens=count)
    context = ContextLoader(held, cache, summarizer, budget_tokens=budget_tokens)  # type: ignore[arg-type]
    router = CommandRouter()
    register_core_commands(router)
    manager = ConversationManager(
        store=held,  # type: ignore[arg-type]
        cache=cache,
        context=context,
        router=router,
        backend=backend,
        settings=settings.conversation,
        generation=settings.backend,
        count_tokens=count,
    )
    sink = CollectingSink()
    manager.attach(KEY.platform, sink)
    try:
        yield Worker(manager, held, sink, cache)
    finally:
        held.release.set()
        backend.release.set()
        await manager.aclose()
        await cache.aclose()
        await store.aclose()


def message(text: str, key: str) -> Incoming:
    return Incoming(KEY, ADA, text, idempotency_key=key)


def last_prompt(backend: ScriptedBackend) -> list[str]:
    """The history of the newest request: every message but the system prompt."""
    return [m.content for m in backend.requests[-1].messages if m.role is not Role.SYSTEM]


@pytest.fixture(params=["in-process", "redis"])
def windows(request: pytest.FixtureRequest) -> str | None:
    """Where the windows are cached: in process, or in Redis (the window cache differs)."""
    if request.param == "in-process":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


async def test_a_message_deleted_as_its_answer_is_recorded_stays_out_of_the_context(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """The answer is recorded (the message can no longer be withdrawn, only redacted), and
    the deletion lands before the turn writes its window: the window it writes back held
    the deleted text, and the next prompt carried it."""
    backend = HeldModel()
    async with worker(database_url, windows, key_prefix, backend) as w:
        w.store.armed = True
        await w.manager.submit(message(f"my token is {SECRET}", "m1"))
        async with asyncio.timeout(WAIT_S):
            await w.store.recorded.wait()
        assert await w.manager.redact("m1")
        w.store.release.set()
        await w.manager.handle(message("what did I say?", "m2"))
        prompt = last_prompt(backend)
        assert not [text for text in prompt if SECRET in text]
        assert DELETED_STUB in prompt  # the conversation reads on around it
        assert w.sink.replies[KEY] == ["Noted.", "Noted."]


async def test_a_message_deleted_while_a_later_answer_streams_stays_out_of_the_context(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """An earlier message, answered and in the window, is deleted while the model answers a
    later one: that turn loaded the window before the deletion and wrote it back after."""
    backend = HeldModel()
    async with worker(database_url, windows, key_prefix, backend) as w:
        await w.manager.handle(message(f"my token is {SECRET}", "m1"))
        await w.manager.submit(message(f"and another thing {HOLD}", "m2"))
        async with asyncio.timeout(WAIT_S):
            await backend.streaming.wait()
        assert SECRET in backend.held[0]  # the turn in flight has it in its window
        assert await w.manager.redact("m1")
        backend.release.set()
        await w.manager.wait_idle()
        await w.manager.handle(message("what did I say?", "m3"))
        prompt = last_prompt(backend)
        assert not [text for text in prompt if SECRET in text]
        assert DELETED_STUB in prompt


# About 190 tokens: with its answer and the next message, over a budget of 200.
LONG = f"my token is {SECRET}. " + "The harbour crane moved crates of tea all day. " * 16


async def test_a_message_deleted_while_the_window_rolls_over_stays_out_of_the_summary(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """The next message does not fit beside the deleted one: its turn folds the window it
    loaded before the deletion into the summary, and the deletion lands during that model
    call. The summary written was of the deleted text, in SQL and every later prompt."""
    backend = HeldSummary()
    async with worker(database_url, windows, key_prefix, backend, budget_tokens=200) as w:
        await w.manager.handle(message(LONG, "m1"))
        await w.manager.submit(message("what next?", "m2"))
        async with asyncio.timeout(WAIT_S):
            await backend.summarising.wait()
        assert await w.manager.redact("m1")
        backend.release.set()
        await w.manager.wait_idle()
        await w.manager.handle(message("what did I say?", "m3"))
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        assert SECRET not in (await w.store.state(cid)).summary
        prompt = last_prompt(backend)
        assert not [text for text in prompt if SECRET in text]
        assert DELETED_STUB in prompt  # folded again from SQL, the deleted message fits now
        assert w.sink.replies[KEY] == ["Noted.", "Noted.", "Noted."]


async def test_a_message_deleted_while_a_refused_prompt_is_shrunk_stays_out_of_the_summary(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """The model refuses the prompt as too long: the turn folds every turn of its window
    into the summary (ContextLoader.shrink), and the deletion lands during that fold."""
    backend = HeldSummary()
    async with worker(database_url, windows, key_prefix, backend) as w:
        await w.manager.handle(message(f"my token is {SECRET}", "m1"))
        backend.refuse = True
        await w.manager.submit(message("what next?", "m2"))
        async with asyncio.timeout(WAIT_S):
            await backend.summarising.wait()
        assert await w.manager.redact("m1")
        backend.release.set()
        await w.manager.wait_idle()
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        assert (await w.store.state(cid)).summary == "They talked."  # folded from SQL
        assert not [text for text in last_prompt(backend) if SECRET in text]  # the retry
        await w.manager.handle(message("what did I say?", "m3"))
        assert not [text for text in last_prompt(backend) if SECRET in text]
        assert w.sink.replies[KEY] == ["Noted.", "Noted.", "Noted."]


async def test_a_roll_over_undone_by_redactions_each_time_gives_up_without_writing(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """Messages redacted during every fold (a bulk deletion): the tries are bounded, and
    none of the summaries is written; the turn is answered from the window as SQL has it."""
    backend = HeldSummary()
    backend.summarising.set()  # no summary is held
    async with worker(database_url, windows, key_prefix, backend, budget_tokens=200) as w:
        folds: list[str] = []

        async def redacted_meanwhile(cid: int, summary: str, *args: Any) -> int | None:
            folds.append(summary)
            return None

        w.store.fold_summary = redacted_meanwhile  # type: ignore[attr-defined]
        await w.manager.handle(message(LONG, "m1"))
        await w.manager.handle(message("what next?", "m2"))
        assert len(folds) == FOLD_TRIES
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        assert (await w.store.state(cid)).summary == ""
        assert last_prompt(backend) == [LONG, "Noted.", "what next?"]
        assert w.sink.replies[KEY] == ["Noted.", "Noted."]


def summary_requests(backend: ScriptedBackend) -> list[str]:
    """What each summary request the model got read (its transcript)."""
    return [
        r.messages[-1].content
        for r in backend.requests
        if r.messages[0].content.startswith(SUMMARY_INSTRUCTION[:20])
    ]


async def test_a_deleted_message_already_in_the_summary_leaves_it(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """The deleted message was folded into the running summary by an earlier roll-over:
    the summary kept its text, in SQL and in every later prompt (a review). The deletion
    drops the summary; the window is built from the messages since the /reset, the stub in
    place of the text, and the next roll-over folds those into a new summary."""
    backend = HeldSummary()
    backend.summarising.set()  # no summary is held
    earlier = "my cat is called Biscuit"
    clean = "The harbour crane moved crates of tea all day. " * 17  # about 190 tokens
    async with worker(database_url, windows, key_prefix, backend, budget_tokens=200) as w:
        await w.manager.handle(message(earlier, "m0"))
        await w.manager.handle(message("/reset", "reset"))
        await w.manager.handle(message(LONG, "m1"))
        await w.manager.handle(message("what next?", "m2"))  # folds m1's turn
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        before = await w.store.state(cid)
        assert SECRET in before.summary and before.context_start_id > 0
        assert await w.manager.redact("m1")
        await w.manager.handle(message("what did I say?", "m3"))
        state = await w.store.state(cid)
        assert SECRET not in state.summary
        assert state.context_start_id == before.context_start_id  # the /reset holds
        remain = [DELETED_STUB, "Noted.", "what next?", "Noted.", "what did I say?"]
        assert last_prompt(backend) == remain  # what fits the budget needs no summary
        await w.manager.handle(message(clean, "m4"))  # over the budget: rolls over again
        state = await w.store.state(cid)
        assert state.summary == "They talked."
        assert state.context_start_id == before.context_start_id
        assert state.summary_through_id > before.summary_through_id
        transcript = summary_requests(backend)[-1]
        assert DELETED_STUB in transcript and "what did I say?" in transcript
        assert SECRET not in transcript and earlier not in transcript
        prompt = last_prompt(backend)
        assert not [text for text in prompt if SECRET in text or earlier in text]
        assert "They talked." in prompt[0]


async def test_a_message_in_the_summary_deleted_while_it_is_folded_again_leaves_it(
    database_url: str, windows: str | None, key_prefix: str
) -> None:
    """A roll-over in flight folds the earlier summary, which holds the deleted text, into
    a new one; the deletion lands during that model call. The fold is refused (a message
    was redacted since its window was built), and the window it is folded again from is
    SQL's, whose summary went with the text."""
    backend = HeldSummary()
    backend.summarising.set()  # the first roll-over is not held
    clean = "The harbour crane moved crates of tea all day. " * 17  # about 190 tokens
    async with worker(database_url, windows, key_prefix, backend, budget_tokens=200) as w:
        await w.manager.handle(message(LONG, "m1"))
        await w.manager.handle(message("what next?", "m2"))  # folds m1's turn
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        assert SECRET in (await w.store.state(cid)).summary
        backend.summarising.clear()  # the next summary waits for `release`
        await w.manager.submit(message(clean, "m3"))
        async with asyncio.timeout(WAIT_S):
            await backend.summarising.wait()
        assert await w.manager.redact("m1")
        backend.release.set()
        await w.manager.wait_idle()
        assert (await w.store.state(cid)).summary == "They talked."
        assert SECRET not in summary_requests(backend)[-1]
        assert not [text for text in last_prompt(backend) if SECRET in text]
        await w.manager.handle(message("what did I say?", "m4"))
        assert not [text for text in last_prompt(backend) if SECRET in text]
        assert w.sink.replies[KEY] == ["Noted."] * 4


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("answered_by", ["first", "second"])
async def test_a_deletion_at_another_worker_holds_against_a_turn_in_flight(
    postgres_url: str, redis_url: str, key_prefix: str, answered_by: str
) -> None:
    """Two workers share PostgreSQL and Redis: the deletion reaches one while the other's
    turn is between recording its answer and writing its window to Redis. Whichever worker
    runs the next turn leaves the deleted text out."""
    first_model, second_model = HeldModel(), HeldModel()
    async with (
        worker(postgres_url, redis_url, key_prefix, first_model) as first,
        worker(postgres_url, redis_url, key_prefix, second_model) as second,
    ):
        first.store.armed = True
        await first.manager.submit(message(f"my token is {SECRET}", "m1"))
        async with asyncio.timeout(WAIT_S):
            await first.store.recorded.wait()
        assert await second.manager.redact("m1")
        first.store.release.set()
        await first.manager.wait_idle()
        nxt, model = (first, first_model) if answered_by == "first" else (second, second_model)
        await nxt.manager.handle(message("what did I say?", "m2"))
        prompt = last_prompt(model)
        assert not [text for text in prompt if SECRET in text]
        assert DELETED_STUB in prompt


async def test_each_redaction_is_counted_with_the_text_it_replaces(database_url: str) -> None:
    """The count a cached window is checked against goes up with every redaction, in the
    same transaction as the text, and not for a message that is not redacted."""
    await ensure_schema(database_url, True)
    store = SqlStore(create_engine(database_url))
    await store.start()
    try:
        chat = MessageKind.CHAT
        first = await store.record_incoming(message("one", "m1"), kind=chat, token_count=1)
        await store.record_incoming(message("two", "m2"), kind=chat, token_count=1)
        cid = first.conversation_id
        assert (await store.state(cid)).redactions == 0
        answered = [m.id for m in await store.pending(cid, 10)]
        await store.record_reply(cid, answered, "answer", kind=chat, token_count=1)
        assert await store.redact("m1") == cid
        assert await store.redact("m1") is None  # once
        assert await store.redact("nothing") is None
        assert (await store.state(cid)).redactions == 1
        assert await store.redact("m2") == cid
        assert (await store.state(cid)).redactions == 2
    finally:
        await store.aclose()


@pytest.mark.redis
async def test_a_window_cached_in_the_earlier_format_is_used_until_a_redaction(
    database_url: str, redis_url: str, key_prefix: str
) -> None:
    """Windows cached before the count existed (they carry none) are current while their
    conversation has had no redaction, so an upgrade rebuilds none of them; one written
    back after a redaction (by a worker of the earlier version, in flight) is stale."""
    backend = HeldModel()
    async with worker(database_url, redis_url, key_prefix, backend) as w:
        await w.manager.handle(message("one", "m1"))
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        reply = (await w.store.state(cid)).last_reply_id
        earlier = ["", 0, 0, [["as cached", "Noted.", 9, reply]]]
        await w.cache.set(keys.window(cid), json.dumps(earlier).encode())
        await w.manager.handle(message("two", "m2"))
        assert last_prompt(backend) == ["as cached", "Noted.", "two"]  # used: current
        assert await w.manager.redact("m1")
        last = (await w.store.state(cid)).last_reply_id
        written_back = ["", 0, 0, [["one", "Noted.", 9, reply], ["two", "Noted.", 9, last]]]
        await w.cache.set(keys.window(cid), json.dumps(written_back).encode())
        await w.manager.handle(message("three", "m3"))
        assert last_prompt(backend) == [DELETED_STUB, "Noted.", "two", "Noted.", "three"]
