"""The turn path's shortcuts hold under races (found by a review of commit 3b76548, which
brought both defects; each test failed on it):

1. On PostgreSQL the lease take returns the conversation's state, its last reply read by a
   subquery in the statement's snapshot. When the take waits for the conversation row (a
   worker whose lease lapsed is recording its reply at that moment), the row it would update
   is newer than that snapshot; the take then finds no row and is tried again, so the state
   it returns always includes that reply, and a Redis window without it is not trusted.
2. The retry layer enforces the reply's `total_s` on a backend that does not honour
   `GenerationRequest.deadline` itself (no `honours_deadline`): one that hangs after its
   first chunk is cut there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import sqlalchemy as sa

from backends.base import GenerationRequest
from backends.resilience import ResilientBackend
from bot.conversation.context import ContextLoader
from bot.conversation.summary import Summarizer
from bot.errors import BackendTimeout
from bot.settings import BackendSettings
from bot.storage.base import ConversationState, MessageKind, StoredMessage
from bot.storage.cache import RedisCache
from bot.storage.database import create_engine
from bot.storage.sql_store import SqlStore
from bot.types import ChatMessage, ConversationKey, Incoming, Role, User
from tests.doubles import ScriptedBackend

KEY = ConversationKey("console", "review-chat")
ALICE = User("console", "u-1", "Alice")
CHAT = MessageKind.CHAT
A = TypeVar("A")
B = TypeVar("B")


async def reply_while_taking(
    url: str, cid: int, answer: Callable[[], Awaitable[A]], take: Callable[[], Awaitable[B]]
) -> tuple[A, B]:
    """`answer` (a lapsed worker's fenced reply) and `take` (another worker's lease take)
    queued for conversation `cid`'s row behind a plain row lock, `answer` first: when `take`
    gets the row, its statement's snapshot is older than the reply."""
    blocker = create_engine(url)
    try:
        async with blocker.connect() as conn:
            tx = await conn.begin()
            await conn.execute(
                sa.text("SELECT id FROM conversations WHERE id = :c FOR UPDATE"), {"c": cid}
            )
            answering = asyncio.create_task(answer())
            await asyncio.sleep(0.3)
            taking = asyncio.create_task(take())
            await asyncio.sleep(0.3)
            await tx.commit()
            return await answering, await taking
    finally:
        await blocker.dispose()


async def _ask(store: SqlStore, ikey: str, text: str) -> tuple[int, int]:
    recorded = await store.record_incoming(
        Incoming(key=KEY, user=ALICE, text=text, idempotency_key=ikey), kind=CHAT, token_count=3
    )
    return recorded.conversation_id, recorded.message_id


async def _count(text: str) -> int:
    return max(1, len(text.split()))


@pytest.mark.postgres
async def test_lease_state_includes_a_reply_committed_while_the_take_waited(
    pg_stores: tuple[SqlStore, SqlStore, str], redis_url: str, key_prefix: str
) -> None:
    worker_a, worker_b, url = pg_stores
    cid, first = await _ask(worker_a, "q1", "first question")
    async with worker_a.turn_lease(cid, "worker-a", ttl_s=30, wait_s=1) as lease:
        assert await worker_a.begin_delivery(lease, cid, first, first)
        epoch_a = lease.epoch
    # Worker A's lease is gone (lapsed, here released) while its answer is still on its way.

    cache = RedisCache.from_url(redis_url, key_prefix=key_prefix)
    loader = ContextLoader(
        worker_b, cache, Summarizer(None, max_tokens=64, count_tokens=_count), budget_tokens=4000
    )
    cached = await loader.load(cid)  # the window as it was before A's answer: no turn yet
    assert cached.turns == []

    def answer() -> Awaitable[StoredMessage | None]:
        return worker_a.record_reply(
            cid, [first], "first answer", kind=CHAT, token_count=2, epoch=epoch_a
        )

    async def take() -> tuple[ConversationState | None, ConversationState]:
        async with worker_b.turn_lease(cid, "worker-b", ttl_s=30, wait_s=5) as taken:
            return taken.state, await worker_b.state(cid)

    stored, (lease_state, fresh) = await reply_while_taking(url, cid, answer, take)

    assert stored is not None  # A's answer is recorded, before B's lease take returned
    assert fresh.last_reply_id == stored.id
    assert lease_state is not None
    # B's first turn checks the cached window against the lease's state: it must know A's
    # answer, or the window without it passes for current.
    window = await loader.load(cid, lease_state)
    await cache.aclose()
    assert [t.reply_id for t in window.turns] == [stored.id]
    assert lease_state.last_reply_id == fresh.last_reply_id


async def test_a_backend_that_hangs_mid_stream_is_cut_at_total_s() -> None:
    delays = iter([0.0, 30.0, 30.0, 30.0])  # the first word at once, then it hangs
    inner = ScriptedBackend(lambda _: "one two three four", delay=lambda: next(delays, 30.0))
    timeouts = {"first_token_s": 60, "gap_s": 60, "total_s": 0.3}
    settings = BackendSettings.model_validate({"timeouts": timeouts})
    backend = ResilientBackend(inner, settings, name="scripted")
    request = GenerationRequest([ChatMessage(Role.USER, "hello")], max_tokens=6)
    received: list[str] = []
    async with asyncio.timeout(3):  # a guard: the limit under test is total_s (0.3 s)
        with pytest.raises(BackendTimeout, match="whole reply"):
            async for chunk in backend.stream(request):
                received.append(chunk.text)
    assert received == ["one"]
