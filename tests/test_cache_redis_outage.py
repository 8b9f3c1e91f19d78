"""RedisCache against a private redis-server that the tests kill and restart.

The shared Redis can't be stopped, so each test starts its own server on a free port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from bot.errors import StorageError
from bot.storage.cache import RedisCache
from tests.ports import free_port
from tests.redis_server import POLL_STEP_S, START_LIMIT_S, PrivateRedis


@pytest.fixture
async def make_cache(private_redis: PrivateRedis, key_prefix: str) -> AsyncIterator[_CacheFactory]:
    factory = _CacheFactory(private_redis.url, key_prefix)
    yield factory
    await factory.aclose_all()


class _CacheFactory:
    def __init__(self, url: str, key_prefix: str) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self._made: list[RedisCache] = []

    def __call__(self, retry_after_failure_s: float) -> RedisCache:
        cache = RedisCache.from_url(
            self.url,
            key_prefix=self.key_prefix,
            socket_timeout_s=1.0,
            retry_after_failure_s=retry_after_failure_s,
        )
        self._made.append(cache)
        return cache

    async def aclose_all(self) -> None:
        for cache in self._made:
            await cache.aclose()


async def test_dead_redis_misses_and_drops_writes_without_raising(
    private_redis: PrivateRedis, make_cache: _CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(retry_after_failure_s=60)
    await cache.set("k", b"v")
    await private_redis.kill()
    with caplog.at_level(logging.WARNING, logger="bot.storage.cache"):
        assert await cache.get("k") is None
        await cache.set("k", b"v2")
        await cache.delete("k")
        assert await cache.get("k") is None
    with pytest.raises(StorageError, match=r"Redis did not answer PING \(ConnectionError\)"):
        await cache.ping()
    outage_warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_warnings) == 1


async def test_after_a_failure_redis_is_skipped_for_the_retry_period(
    private_redis: PrivateRedis, make_cache: _CacheFactory
) -> None:
    cache = make_cache(retry_after_failure_s=60)
    await private_redis.kill()
    assert await cache.get("k") is None
    await private_redis.start()
    # The server is back and holds the key, yet within the retry period the cache does not
    # ask it: this is what spares every call a timeout while Redis is really down.
    direct = Redis.from_url(private_redis.url)
    try:
        await direct.set(f"{make_cache.key_prefix}:k", b"there")
        assert await cache.get("k") is None
    finally:
        await direct.aclose()


async def test_cache_recovers_when_redis_comes_back(
    private_redis: PrivateRedis, make_cache: _CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(retry_after_failure_s=0.2)
    await cache.set("k", b"v")
    await private_redis.kill()
    assert await cache.get("k") is None
    await private_redis.start()
    with caplog.at_level(logging.INFO, logger="bot.storage.cache"):
        for _ in range(int(START_LIMIT_S / POLL_STEP_S)):
            await cache.set("k", b"again")
            if await cache.get("k") == b"again":
                break
            await asyncio.sleep(POLL_STEP_S)
        else:
            pytest.fail("the cache did not use Redis again after it came back")
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_logs_never_show_the_url_password(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens here
    cache = RedisCache.from_url(
        f"redis://:hunter2-secret@127.0.0.1:{port}/0", key_prefix="p", socket_timeout_s=1.0
    )
    try:
        with caplog.at_level(logging.DEBUG):
            assert await cache.get("k") is None
            assert await cache.count("k", 1) == 0
    finally:
        await cache.aclose()
    assert caplog.records
    assert "hunter2-secret" not in caplog.text
