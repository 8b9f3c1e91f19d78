"""Cache.read_through: a load that read SQL before a change never replaces what the change
refreshed after it (the handoff state an agent just took stays taken)."""

from __future__ import annotations

import asyncio

import pytest

from bot.storage.base import Cache, Codec
from bot.storage.cache import MemoryCache, RedisCache

CODEC = Codec[str](str.encode, bytes.decode)  # no `current` check, as prefs and handoff


async def raced_refresh(cache: Cache) -> str:
    sql = {"state": "BOT"}  # the row behind the cached object
    loading, release = asyncio.Event(), asyncio.Event()

    async def load(_id: int) -> str:
        value = sql["state"]  # the SELECT ran...
        if not loading.is_set():  # the customer's load, not the refresh's
            loading.set()
            await release.wait()  # ...its result is still on its way back
        return value

    states = cache.read_through(lambda i: f"race:handoff:{i}", load, CODEC, ttl_s=3600)
    reader = asyncio.create_task(states.get(7))  # a customer message reads the state
    await loading.wait()
    sql["state"] = "HUMAN"  # an agent takes the conversation (HandoffRepository.change)...
    await states.refresh(7)  # ...and refreshes the cached state, as the repository does
    release.set()
    await reader
    return await states.get(7)  # the next customer message


async def test_memory_read_through_keeps_no_stale_object_after_refresh() -> None:
    assert await raced_refresh(MemoryCache()) == "HUMAN"


@pytest.mark.redis
async def test_redis_read_through_keeps_no_stale_copy_after_refresh(
    redis_url: str, key_prefix: str
) -> None:
    cache = RedisCache.from_url(redis_url, key_prefix=key_prefix)
    try:
        assert await raced_refresh(cache) == "HUMAN"
    finally:
        await cache.delete("race:handoff:7")
        await cache.aclose()
