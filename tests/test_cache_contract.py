"""One contract suite run over every Cache implementation (real Redis, no mocks).

Each test gets a `cache` and a `peer`: another user of the same entries. For MemoryCache that
is the same object (its scope is the process); for Redis it is a second RedisCache with its
own connection pool, standing in for another worker process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bot.storage import keys
from bot.storage.base import Cache, Codec, ReadThrough
from bot.storage.cache import MemoryCache, RedisCache

# Bounds for polling loops: generous, because these tests must not depend on machine speed.
POLL_LIMIT_S = 10.0
POLL_STEP_S = 0.05
# A counting window: every call of a test's first window must land in it, a few Redis round
# trips that a loaded machine can stall for more than the 0.3 s this was.
WINDOW_S = 1.0
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


async def test_set_newer_keeps_the_later_order_whoever_writes_last(
    cache: Cache, peer: Cache
) -> None:
    await cache.set_newer("k", b"newer", "2026-12-01T12:00:20.000000", 600)
    await peer.set_newer("k", b"older", "2026-12-01T12:00:10.000000", 600)
    assert await cache.get("k") == b"newer"
    await peer.set_newer("k", b"same time", "2026-12-01T12:00:20.000000", 600)
    assert await cache.get("k") == b"same time"  # at the same time, the last written
    await cache.delete("k")  # taken: an older value still never comes after it
    await peer.set_newer("k", b"older", "2026-12-01T12:00:10.000000", 600)
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
    assert await cache.ping() is None  # it answers: nothing raised


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
    assert [await cache.count("rate:u1", WINDOW_S) for _ in range(3)] == [1, 2, 3]
    assert await peer.count("rate:u1", WINDOW_S) == 4  # every worker counts in the same window
    assert await cache.count("rate:u2", WINDOW_S) == 1
    await asyncio.sleep(WINDOW_S + 0.05)
    assert await cache.count("rate:u1", WINDOW_S) == 1  # a new window


async def test_a_named_hit_counts_once_even_when_two_deliveries_race(
    cache: Cache, peer: Cache
) -> None:
    # A platform's repeat of a message, handled by two workers at the same moment: one hit.
    counter, hit = keys.rate("u1"), keys.counted("u1", "update-7")
    both = await asyncio.gather(*(c.count(counter, 30, once=hit) for c in [cache, peer] * 4))
    assert both == [1] * 8
    assert await cache.count(counter, 30, once=keys.counted("u1", "update-8")) == 2
    assert await peer.count(counter, 30, once=hit) == 1  # the first answer, kept
    assert await peer.count(counter, 30) == 3  # an unnamed hit always counts


async def test_a_named_hit_lapses_with_its_window(cache: Cache) -> None:
    counter, hit = keys.rate("u1"), keys.counted("u1", "update-7")
    assert await cache.count(counter, WINDOW_S, once=hit) == 1
    await asyncio.sleep(WINDOW_S + 0.05)
    assert await cache.count(counter, WINDOW_S, once=hit) == 1  # a new window counts it anew
    assert await cache.count(counter, WINDOW_S) == 2


# The read-through layer: the same contract over both, and where they differ by design.


class Loads:
    """A loader that counts its calls and hands out the current version of each object."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.version = 1

    async def __call__(self, id_: int) -> list[int]:
        self.calls.append(id_)
        return [id_, self.version]


LISTS = Codec[list[int]](lambda v: json.dumps(v).encode(), lambda raw: list(json.loads(raw)))


async def _never(_id: int, _copy: list[int]) -> bool:
    return False


STALE = dataclasses.replace(LISTS, current=_never)  # every copy from elsewhere is stale


def _objects(cache: Cache, load: Loads, codec: Codec[list[int]] = LISTS) -> ReadThrough[list[int]]:
    return cache.read_through(keys.window, load, codec, ttl_s=60)


async def test_read_through_loads_once_then_serves_every_worker(cache: Cache, peer: Cache) -> None:
    load = Loads()
    assert await _objects(cache, load).get(7) == [7, 1]
    assert await _objects(cache, load).get(7) == [7, 1]
    assert await _objects(peer, load).get(7) == [7, 1]
    assert load.calls == [7]


async def test_read_through_put_replaces_and_invalidate_reloads(cache: Cache, peer: Cache) -> None:
    load = Loads()
    objects, peers = _objects(cache, load), _objects(peer, load)
    await objects.put(3, [3, 99])
    assert await peers.get(3) == [3, 99]
    load.version = 2
    await peers.invalidate(3)  # a change on one worker reaches the others
    assert await objects.get(3) == [3, 2]
    assert load.calls == [3]


async def test_memory_read_through_keeps_the_object_itself() -> None:
    cache, load = MemoryCache(), Loads()
    objects = _objects(cache, load, STALE)
    first = await objects.get(1)
    first.append(5)  # what this process changed is what it reads: no copy, no check
    assert await objects.get(1) is first
    assert load.calls == [1]


async def test_memory_objects_share_the_one_bounded_lru() -> None:
    cache, load = MemoryCache(max_entries=2), Loads()
    objects = _objects(cache, load)
    await objects.get(1)
    await cache.set("other", b"x")
    await objects.get(2)  # the least recently used entry, object 1, goes
    await objects.get(1)
    assert load.calls == [1, 2, 1]


@pytest.mark.redis
async def test_redis_read_through_checks_a_copy_before_use(redis_url: str, key_prefix: str) -> None:
    first, second = _redis_pair(redis_url, key_prefix)
    try:
        load = Loads()
        await _objects(first, load).get(4)
        load.version = 2
        # Another worker's copy is stale: `current` says so, the object is loaded again
        # and the fresh copy replaces it.
        assert await _objects(second, load, STALE).get(4) == [4, 2]
        assert await _objects(first, load).get(4) == [4, 2]
        assert load.calls == [4, 4]
    finally:
        await first.aclose()
        await second.aclose()
        await _drop_prefix(redis_url, key_prefix)


@pytest.mark.redis
async def test_redis_read_through_loads_again_over_unreadable_bytes(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache, peer = _redis_pair(redis_url, key_prefix)
    try:
        await cache.set(keys.window(9), b"written by another version")
        load = Loads()
        assert await _objects(peer, load).get(9) == [9, 1]
        assert load.calls == [9]
        assert "unreadable cache entry" in caplog.text
    finally:
        await cache.aclose()
        await peer.aclose()
        await _drop_prefix(redis_url, key_prefix)
