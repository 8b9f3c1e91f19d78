"""Two edits of one message not recorded yet (its document still read), handled at once by
two workers: each looked for a newer edit's mark, found none, then wrote its own, so the older
edit, written last, took the place of the newer one's mark and the message was recorded with
the older text (one the sender may have edited a secret out of). The mark is now written only
where no newer edit's is held, in one step of the cache (Cache.set_newer)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from bot.conversation.context import ContextLoader
from bot.conversation.manager import ConversationManager
from bot.conversation.summary import Summarizer
from bot.settings import Settings
from bot.skills.router import CommandRouter
from bot.storage.cache import RedisCache
from bot.storage.database import create_engine
from bot.storage.migrate import upgrade
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink

SECRET = "hunter2-secret"


class MarkingSink(CollectingSink):
    def edits_marked(self) -> bool:
        return True


class SlowReads(RedisCache):
    """Two workers: each reads an edit's mark before either writes one."""

    reads = 0
    both_read = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        found = await super().get(key)
        if key.startswith("edited:"):
            SlowReads.reads += 1
            if SlowReads.reads >= 2:
                SlowReads.both_read.set()
            await SlowReads.both_read.wait()
        return found


async def count(text: str) -> int:
    return len(text.split())


async def test_two_edits_at_once_before_the_record_keep_the_newer(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await upgrade(url)
    store = SqlStore(create_engine(url))
    await store.start()
    settings = Settings()
    cache = SlowReads.from_url(redis_url, key_prefix=key_prefix)
    context = ContextLoader(store, cache, Summarizer(None, max_tokens=64, count_tokens=count),
                            budget_tokens=2000)  # fmt: skip
    manager = ConversationManager(
        store=store, cache=cache, context=context, router=CommandRouter(), backend=None,
        settings=settings.conversation, generation=settings.backend, count_tokens=count,
    )  # fmt: skip
    manager.attach("telegram", MarkingSink())
    try:
        ada = User("telegram", "7", "Ada")
        chat = ConversationKey("telegram", "7")

        def said(text: str) -> Incoming:
            return Incoming(chat, ada, text, "telegram:7:1")

        newer = datetime(2026, 12, 1, 12, 0, 20, tzinfo=UTC)
        older = datetime(2026, 12, 1, 12, 0, 10, tzinfo=UTC)
        async with asyncio.timeout(10):  # a guard only: each edit is handled in moments
            await asyncio.gather(
                manager.edit(said(f"log in with {SECRET}!"), edited_at=older),
                manager.edit(said("log in with my password"), edited_at=newer),
            )
        SlowReads.both_read.set()  # later reads (the record's) wait for nothing
        await manager.submit(said(f"log in with {SECRET}"))
        cid = await store.conversation_id(chat)
        assert cid is not None
        texts = [m.content for m in await store.history(cid, 10)]
        assert texts == ["log in with my password"]
    finally:
        await manager.aclose()
        await cache.aclose()
        await store.aclose()
