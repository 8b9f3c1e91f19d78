"""An answer whose first message was deleted in the chat before it was recorded (its deletion
event found nothing and left a mark, ConversationManager.redact): the turn redacts it once
recorded (TurnDelivery._redact_if_deleted), through a database blip as the record itself is."""

from __future__ import annotations

from pathlib import Path

from bot.conversation.context import ContextLoader
from bot.conversation.delivery import TurnDelivery
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import Summarizer
from bot.errors import StorageError
from bot.settings import Settings
from bot.skills.router import CommandRouter
from bot.storage import keys
from bot.storage.base import ANSWER_DELETED_STUB, MessageKind
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine
from bot.storage.migrate import upgrade
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User


class BlipOnRedact(SqlStore):
    """The database unreachable for the first redaction only."""

    blips = 1

    async def redact(self, idempotency_key: str) -> int | None:
        if self.blips:
            self.blips -= 1
            raise StorageError("connection reset")
        return await super().redact(idempotency_key)


async def test_a_marked_answer_is_redacted_through_a_database_blip(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await upgrade(url)
    store = BlipOnRedact(create_engine(url))
    await store.start()
    try:
        asked = Incoming(ConversationKey("discord", "c1"), User("discord", "u1"), "hi", "m1")
        cid = (
            await store.record_incoming(asked, kind=MessageKind.CHAT, token_count=1)
        ).conversation_id
        marks = MemoryCache()
        await marks.set(keys.deleted("discord:101"), b"1", 60)  # the deletion event's mark
        async with store.turn_lease(cid, "worker-a", ttl_s=30, wait_s=1) as lease:
            batch = list(await store.pending(cid, 10))
            turn = TurnDelivery(store, lease, cid, batch, retry_s=5, deletions=marks)
            turn.answer_key = lambda ref: f"discord:{ref}"
            await turn.begin()
            await turn.showed(0, 101)
            stored = await turn.record("The whole answer.", kind=MessageKind.CHAT,
                                       token_count=4, retry_s=5)  # fmt: skip
            assert stored is not None and turn.deleted_in_chat
        history = await store.history(cid, 10)
        assert history[-1].content == ANSWER_DELETED_STUB
    finally:
        await store.aclose()


async def count(text: str) -> int:
    return len(text.split())


async def test_deletion_marks_in_process_do_not_evict_the_rate_counters(tmp_path: Path) -> None:
    """Every deletion event in a server (any member's message, in any channel the bot reads)
    leaves a mark for a day. In process they must not share the cache's one LRU with the
    windows and the rate counters: a moderator's purge of a flood would reset the limit of
    the very sender who flooded. (A small LRU here; 30,000 entries by default.)"""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await upgrade(url)
    store = SqlStore(create_engine(url))
    await store.start()
    settings = Settings(conversation={"rate_limit_messages": 2})  # type: ignore[arg-type]
    cache = MemoryCache(max_entries=64)
    context = ContextLoader(store, cache, Summarizer(None, max_tokens=64, count_tokens=count),
                            budget_tokens=2000)  # fmt: skip
    router = CommandRouter()
    manager = ConversationManager(
        store=store, cache=cache, context=context, router=router, backend=None,
        settings=settings.conversation, generation=settings.backend, count_tokens=count,
    )  # fmt: skip
    try:
        ada = User("discord", "u1", "Ada")
        said = [Incoming(ConversationKey("discord", "c1"), ada, "buy", f"discord:{n}")
                for n in range(3)]  # fmt: skip
        assert not await manager.over_rate_limit(said[0])
        assert not await manager.over_rate_limit(said[1])
        for n in range(1000, 1100):  # a bulk delete of 100 messages the bot never recorded
            assert not await manager.redact(f"discord:{n}")
        assert await manager.over_rate_limit(said[2])
    finally:
        await manager.aclose()
        await store.aclose()
