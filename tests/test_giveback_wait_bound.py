"""A give-back waits for the agent's replies recorded before it (the manager's
agent_replies_delivered), but only so long: docs/support-desk.md says that where they are held
up past `delivery_grace_s` plus `lock_ttl_s` (the database away among the reasons) the
give-back is applied then, with a warning, and the replies follow. wait_answered, which it
used, pushes its limit on at each failed look while the database is away (right for the
console, which waits for its answer), so a database that went away during the wait held the
agent's give-back (an HTTP request, a Chatwoot webhook) for as long as it stayed away. The real
ConversationManager over SQLite, whose store goes away after the first look."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from backends.base import estimate_tokens
from bot.conversation.context import ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import Summarizer
from bot.errors import StorageError
from bot.settings import Settings
from bot.skills.core_commands import register_core_commands
from bot.skills.router import CommandRouter
from bot.storage.base import MessageKind, Recorded, StoredMessage
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User
from tests.doubles import ScriptedBackend

KEY = ConversationKey("test", "chat-1")


class GoesAway(SqlStore):
    """A store whose database goes away (`away` set): its pending messages can no longer be
    read, and each look says so, as a dropped connection would."""

    away = False

    async def pending(self, conversation_id: int, limit: int) -> Sequence[StoredMessage]:
        if self.away:
            raise StorageError("the database is unreachable")
        found = await super().pending(conversation_id, limit)
        self.away = True  # after this first look (the give-back's own)
        return found


async def count(text: str) -> int:
    return estimate_tokens(text)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, store_class: type[SqlStore], limit_s: float
) -> AsyncIterator[tuple[SqlStore, ConversationManager]]:
    """The real manager over SQLite, with `delivery_grace_s` and `lock_ttl_s` of `limit_s`
    each, and no sink for the platform: a reply's turn leaves it pending (held up)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    settings = Settings(
        database={"url": url},  # type: ignore[arg-type]
        conversation={  # type: ignore[arg-type]
            "sweep_interval_s": 0, "delivery_grace_s": limit_s, "lock_ttl_s": limit_s,
        },
    )  # fmt: skip
    await ensure_schema(url, True)
    store = store_class(create_engine(url))
    await store.start()
    backend = ScriptedBackend(lambda request: "", delay=lambda: 0.0)
    context = ContextLoader(
        store,
        MemoryCache(),
        Summarizer(backend, max_tokens=64, count_tokens=count),
        budget_tokens=2000,
    )
    router = CommandRouter()
    register_core_commands(router)
    manager = ConversationManager(
        store=store, cache=MemoryCache(), context=context, router=router, backend=backend,
        settings=settings.conversation, generation=settings.backend, count_tokens=count,
    )  # fmt: skip
    manager.start()
    try:
        yield store, manager
    finally:
        await manager.aclose()
        await store.aclose()


async def agent_reply(store: SqlStore) -> Recorded:
    reply = Incoming(KEY, User("agent", "Dana", "Dana"), "Your refund is on its way.", "a-1")
    return await store.record_incoming(reply, kind=MessageKind.AGENT, token_count=8)


async def test_a_give_back_stops_waiting_for_replies_while_the_database_is_away(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, GoesAway, 0.05) as (store, manager):
        recorded = await agent_reply(store)
        # A hang guard only: the limit under test is 0.1 s, and each look every second.
        async with asyncio.timeout(30):
            delivered = await manager.agent_replies_delivered(recorded.conversation_id, KEY)
        assert delivered is False  # given up: the give-back is applied, the reply follows


async def test_a_give_back_on_a_stopping_worker_does_not_wait_for_replies(tmp_path: Path) -> None:
    """A worker that is stopping (drain) starts no turn: the reply's turn could only run on
    another worker or after the next start, so the give-back waited out its whole limit and
    held the worker's graceful stop. It is given up at once there."""
    async with running(tmp_path, SqlStore, 600) as (store, manager):
        recorded = await agent_reply(store)
        assert await manager.drain(5) is True  # no turn in flight: the stop begins
        # A hang guard only: the limit it would wait out is 1,200 s.
        async with asyncio.timeout(60):
            delivered = await manager.agent_replies_delivered(recorded.conversation_id, KEY)
        assert delivered is False
        # Still pending: the next worker delivers it.
        pending = await store.pending(recorded.conversation_id, 10)
        assert [m.id for m in pending] == [recorded.message_id]
