"""A message that arrives while the answer to the one before it streams is recorded before
that answer (a smaller id), and answered by the next turn. When a roll-over folds the turn
before it into the summary, `summary_through_id` is that turn's answer: a window rebuilt from
SQL (another worker, a restart, the Redis copy lost or stale) read only the messages after
it, so the message that arrived during the stream was in neither the summary nor the window,
and its answer, with no question, was left out too (a helper's review)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from backends.base import Chunk, GenerationRequest, estimate_tokens
from bot.conversation.context import ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import Summarizer
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.router import CommandRouter
from bot.storage import keys
from bot.storage.base import Cache
from bot.storage.cache import build_cache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend

KEY = ConversationKey("test", "arrived-while-streaming")
ADA = User("test", "u1", "Ada")
HOLD = "(held)"
WAIT_S = 10
# About 190 tokens: with its answer and the next message, over a budget of 200.
LONG = (
    f"{HOLD} Tell me about the harbour. " + "The harbour crane moved crates of tea all day. " * 16
)
CAT = "my cat is called Biscuit"
DOG = "my dog is called Pepper"


class HeldModel(ScriptedBackend):
    """Answers "Noted."; the answer to a message with HOLD in it waits for `release`."""

    def __init__(self) -> None:
        super().__init__(lambda request: "Noted.")
        self.streaming = asyncio.Event()
        self.release = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        if HOLD in request.messages[-1].content:
            self.streaming.set()
            await self.release.wait()
        async for chunk in super().stream(request):
            yield chunk


@dataclass
class Worker:
    manager: ConversationManager
    store: SqlStore
    cache: Cache


async def count(text: str) -> int:
    return estimate_tokens(text)


@asynccontextmanager
async def worker(
    url: str, redis_url: str | None, prefix: str, backend: HeldModel, burst: str
) -> AsyncIterator[Worker]:
    """One worker's turn pipeline, its windows in Redis where `redis_url` is given, else in
    process; the summary is the extract (no model), so it shows what was folded."""
    redis = {"url": redis_url, "key_prefix": prefix} if redis_url else {}
    settings = Settings(
        database={"url": url},  # type: ignore[arg-type]
        redis=redis,  # type: ignore[arg-type]
        conversation={"burst": burst},  # type: ignore[arg-type]
    )
    await ensure_schema(url, True)
    store = SqlStore(create_engine(url))
    await store.start()
    cache = build_cache(settings.redis)
    summarizer = Summarizer(None, max_tokens=256, count_tokens=count)
    context = ContextLoader(store, cache, summarizer, budget_tokens=200)
    router = CommandRouter()
    register_core_commands(router)
    manager = ConversationManager(
        store=store,
        cache=cache,
        context=context,
        router=router,
        backend=backend,
        settings=settings.conversation,
        generation=settings.backend,
        count_tokens=count,
    )
    manager.attach(KEY.platform, CollectingSink())
    try:
        yield Worker(manager, store, cache)
    finally:
        backend.release.set()
        await manager.aclose()
        await cache.aclose()
        await store.aclose()


def message(text: str, key: str) -> Incoming:
    return Incoming(KEY, ADA, text, idempotency_key=key)


def last_prompt(backend: ScriptedBackend) -> str:
    """The history of the newest request, the summary included: all but the system prompt."""
    return "\n".join(m.content for m in backend.requests[-1].messages if m.role is not Role.SYSTEM)


@pytest.fixture(params=["in-process", "redis"])
def windows(request: pytest.FixtureRequest) -> str | None:
    if request.param == "in-process":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.mark.parametrize("burst", ["merge", "queue"])
async def test_a_message_sent_while_the_answer_before_it_streams_survives_a_roll_over(
    database_url: str, windows: str | None, key_prefix: str, burst: str
) -> None:
    """M1 is answered slowly; M2 (and M2b) arrive while A1 streams, so they are recorded
    before A1. The turn that answers them folds (M1, A1) into the summary. Then the cached
    window is gone (a new worker; in Redis the window deleted): the next prompt, rebuilt from
    SQL, still holds what M2 and M2b said, in the summary or the window."""
    backend = HeldModel()
    async with worker(database_url, windows, key_prefix, backend, burst) as w:
        await w.manager.submit(message(LONG, "m1"))
        async with asyncio.timeout(WAIT_S):
            await backend.streaming.wait()
        await w.manager.submit(message(CAT, "m2"))  # recorded: an id below A1's
        await w.manager.submit(message(DOG, "m2b"))
        backend.release.set()
        await w.manager.wait_idle()
        cid = await w.store.conversation_id(KEY)
        assert cid is not None
        state = await w.store.state(cid)
        assert state.summary_through_id > 0  # (M1, A1) was folded
        assert "harbour" in state.summary and CAT not in state.summary
        await w.manager.handle(message("what are my pets called?", "m3"))
        kept = last_prompt(backend)
        assert CAT in kept and DOG in kept  # the window this worker kept has them
    if windows is not None:
        async with worker(database_url, windows, key_prefix, backend, burst) as w:
            await w.cache.delete(keys.window(cid))
    async with worker(database_url, windows, key_prefix, backend, burst) as w:
        await w.manager.handle(message("and again: what are my pets called?", "m4"))
        rebuilt = last_prompt(backend)
        assert "what are my pets called?" in rebuilt
        assert CAT in rebuilt, rebuilt
        assert DOG in rebuilt, rebuilt
