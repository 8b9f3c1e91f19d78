"""A delivery whose durable beginning fails is never recorded as answered: nothing was shown,
so the turn fails and its message stays pending for the next try."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from backends.base import estimate_tokens
from bot.conversation.context import ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.relay import STOP_WATCHER
from bot.conversation.summary import Summarizer
from bot.errors import StorageError
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.router import CommandRouter
from bot.storage.base import TurnLease
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend

KEY = ConversationKey("test", "chat-1")


class BeginFailsOnce:
    """The Store seam, whose first begin_delivery meets a database blip."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def begin_delivery(self, lease: TurnLease, *args: Any, **kwargs: Any) -> bool:
        if self.failures:
            self.failures -= 1
            raise StorageError("connection reset (a blip)")
        return await self.inner.begin_delivery(lease, *args, **kwargs)


async def count(text: str) -> int:
    return estimate_tokens(text)


async def test_a_failed_delivery_begin_leaves_the_message_for_a_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    settings = Settings(database={"url": url})  # type: ignore[arg-type]
    await ensure_schema(url, True)
    store = SqlStore(create_engine(url))
    await store.start()
    flaky = BeginFailsOnce(store)
    cache = MemoryCache()
    backend = ScriptedBackend()
    summarizer = Summarizer(backend, max_tokens=64, count_tokens=count)
    context = ContextLoader(flaky, cache, summarizer, budget_tokens=2000)  # type: ignore[arg-type]
    router = CommandRouter()
    register_core_commands(router)
    manager = ConversationManager(
        store=flaky,  # type: ignore[arg-type]
        cache=cache,
        context=context,
        router=router,
        backend=backend,
        settings=settings.conversation,
        generation=settings.backend,
        count_tokens=count,
    )
    sink = CollectingSink()
    manager.attach("test", sink)
    manager.start()
    try:
        with caplog.at_level(logging.ERROR):
            recorded = await manager.handle(
                Incoming(KEY, User("test", "u1", "Ada"), "hello there", idempotency_key="m1")
            )
            await manager.wait_idle()
            # The failed delivery closed what it streamed: no /stop watcher is left waiting.
            watchers = [t for t in asyncio.all_tasks() if t.get_name() == STOP_WATCHER]
            assert not [t for t in watchers if not t.done()]
        history = await store.history(recorded.conversation_id, 10)
        pending = await store.pending(recorded.conversation_id, 10)
    finally:
        await manager.aclose()
        await store.aclose()
    shown = sink.replies[KEY]
    answers = [m.content for m in history if m.role is Role.ASSISTANT]
    print("shown to the user:", shown)
    print("recorded answers:", answers)
    print("pending:", [m.content for m in pending])
    print("errors logged:", [r.getMessage() for r in caplog.records])
    # The contract: an answer is recorded only for what the user saw; one that was never
    # shown leaves its message pending (retried), it is not settled with an unseen answer.
    assert answers == [] or shown, "message settled with an answer the user never saw"
