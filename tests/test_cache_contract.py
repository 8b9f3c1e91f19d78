"""One contract suite run over every Cache implementation (real Redis, no mocks).

Each test gets a `cache` and a `peer`: another user of the same entries and lock names. For
MemoryCache that is the same object (its scope is the process); for Redis it is a second
RedisCache with its own connection pool, standing in for another worker process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bot.storage.base import Cache
from bot.storage.cache import MemoryCache, RedisCache

# Bounds for polling loops: generous, because these tests must not depend on machine speed.
POLL_LIMIT_S = 10.0
POLL_STEP_S = 0.05
BYTE_VALUES = [b"", b"\x00\xff\x00", "héllo ✓".encode(), bytes(range(256)) * 400]


def _redis_pair(redis_url: str, key_prefix: str) -> tuple[Cache, Cache]:
    first = RedisCache.from_url(redis_url, key_prefix=key_prefix, socket_timeout_s=2.0)
    second = RedisCache.from_url(redis_url, key_prefix=key_prefix, socket_timeout_s=2.0)
    return first, second


async def _drop_prefix(redis_url: str, key_prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{key_prefix}:*"):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Cache, Cache]]:
    if request.param == "memory":
        cache = MemoryCache()
        yield cache, cache
        await cache.aclose()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    key_prefix: str = request.getfixturevalue("key_prefix")
    first, second = _redis_pair(redis_url, key_prefix)
    yield first, second
    await first.aclose()
    await second.aclose()
    await _drop_prefix(redis_url, key_prefix)


@pytest.fixture
def cache(pair: tuple[Cache, Cache]) -> Cache:
    return pair[0]


@pytest.fixture
def peer(pair: tuple[Cache, Cache]) -> Cache:
    return pair[1]


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll until `check` is true; fail after POLL_LIMIT_S."""
    for _ in range(int(POLL_LIMIT_S / POLL_STEP_S)):
        if await check():
            return
        await asyncio.sleep(POLL_STEP_S)
    pytest.fail(f"condition not met within {POLL_LIMIT_S}s")


async def test_get_of_missing_key_is_none(cache: Cache) -> None:
    assert await cache.get("missing") is None


async def test_set_then_get_from_peer(cache: Cache, peer: Cache) -> None:
    await cache.set("k", b"value")
    assert await cache.get("k") == b"value"
    assert await peer.get("k") == b"value"


async def test_overwrite_replaces_value(cache: Cache) -> None:
    await cache.set("k", b"first")
    await cache.set("k", b"second")
    assert await cache.get("k") == b"second"


async def test_delete_removes_and_missing_delete_is_quiet(cache: Cache) -> None:
    await cache.set("k", b"v")
    await cache.delete("k")
    await cache.delete("never-set")
    assert await cache.get("k") is None


@pytest.mark.parametrize("value", BYTE_VALUES)
async def test_bytes_values_round_trip(cache: Cache, value: bytes) -> None:
    await cache.set("k", value)
    assert await cache.get("k") == value


async def test_ttl_expires_short_entry_only(cache: Cache) -> None:
    await cache.set("short", b"v", ttl_s=0.2)
    await cache.set("long", b"v", ttl_s=600)
    await cache.set("forever", b"v")

    async def short_gone() -> bool:
        return await cache.get("short") is None

    await _eventually(short_gone)
    assert await cache.get("long") == b"v"
    assert await cache.get("forever") == b"v"


async def test_set_without_ttl_clears_earlier_ttl(cache: Cache) -> None:
    await cache.set("k", b"old", ttl_s=0.2)
    await cache.set("k", b"new")
    await cache.set("marker", b"v", ttl_s=0.2)

    async def marker_gone() -> bool:
        return await cache.get("marker") is None

    await _eventually(marker_gone)
    assert await cache.get("k") == b"new"


async def test_ping(cache: Cache) -> None:
    assert await cache.ping() is True


async def test_lock_gives_mutual_exclusion(cache: Cache, peer: Cache) -> None:
    counter = 0

    async def increment(owner: Cache) -> None:
        nonlocal counter
        async with owner.lock("counter", ttl_s=5, wait_s=30):
            seen = counter
            await asyncio.sleep(0.005)  # a lost update would show if another task got in here
            counter = seen + 1

    await asyncio.gather(*(increment(cache if i % 2 else peer) for i in range(20)))
    assert counter == 20


async def test_lock_times_out_while_held(cache: Cache, peer: Cache) -> None:
    async with cache.lock("busy", ttl_s=5, wait_s=1):
        with pytest.raises(TimeoutError):
            async with peer.lock("busy", ttl_s=5, wait_s=0.2):
                pytest.fail("acquired a lock that is held")


async def test_locks_with_other_names_are_independent(cache: Cache, peer: Cache) -> None:
    async with cache.lock("a", ttl_s=5, wait_s=1), peer.lock("b", ttl_s=5, wait_s=1):
        pass


async def test_lock_is_extended_while_held_past_ttl(cache: Cache, peer: Cache) -> None:
    ttl_s = 0.3
    acquired = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with cache.lock("long", ttl_s=ttl_s, wait_s=1):
            acquired.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await acquired.wait()
    await asyncio.sleep(3 * ttl_s)  # the holder outlives its ttl: only extension keeps it
    with pytest.raises(TimeoutError):
        async with peer.lock("long", ttl_s=ttl_s, wait_s=0.1):
            pytest.fail("acquired a lock whose holder is alive")
    release.set()
    await task
    async with peer.lock("long", ttl_s=ttl_s, wait_s=1):
        pass


async def test_lock_is_released_when_the_body_raises(cache: Cache, peer: Cache) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with cache.lock("fragile", ttl_s=5, wait_s=1):
            raise RuntimeError("boom")
    async with peer.lock("fragile", ttl_s=5, wait_s=0.5):
        pass


async def test_memory_cache_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    await cache.get("a")  # now "b" is the least recently used
    await cache.set("c", b"3")
    assert await cache.get("b") is None
    assert await cache.get("a") == b"1"
    assert await cache.get("c") == b"3"


async def test_count_is_shared_and_lapses_with_its_window(cache: Cache, peer: Cache) -> None:
    assert [await cache.count("rate:u1", 0.3) for _ in range(3)] == [1, 2, 3]
    assert await peer.count("rate:u1", 0.3) == 4  # every worker counts in the same window
    assert await cache.count("rate:u2", 0.3) == 1
    await asyncio.sleep(0.35)
    assert await cache.count("rate:u1", 0.3) == 1  # a new window
