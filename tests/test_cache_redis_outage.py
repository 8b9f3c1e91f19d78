"""RedisCache against a private redis-server that the tests kill and restart.

The shared Redis can't be stopped, so each test starts its own server on a free port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest
from redis.asyncio import Redis

from bot.storage.cache import RedisCache

START_LIMIT_S = 10.0
POLL_STEP_S = 0.05


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A throwaway redis-server (no persistence) that a test can kill and start again."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_for_ping()

    async def _wait_for_ping(self) -> None:
        client = Redis.from_url(self.url, socket_timeout=1)
        try:
            for _ in range(int(START_LIMIT_S / POLL_STEP_S)):
                try:
                    if await client.ping():
                        return
                except Exception:  # refused until the server listens
                    await asyncio.sleep(POLL_STEP_S)
        finally:
            await client.aclose()
        pytest.fail(f"private redis-server did not answer PING within {START_LIMIT_S}s")

    async def kill(self) -> None:
        """SIGKILL, as in a crash: no clean shutdown, connections just drop."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None


def _missing_binary() -> NoReturn:
    reason = "redis-server is not on PATH; the outage tests start a private one"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI requires {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def server() -> AsyncIterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        _missing_binary()
    private = PrivateRedis(binary, _free_port())
    await private.start()
    yield private
    await private.kill()


@pytest.fixture
async def make_cache(server: PrivateRedis, key_prefix: str) -> AsyncIterator[_CacheFactory]:
    factory = _CacheFactory(server.url, key_prefix)
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


async def _count_under_lock(caches: list[RedisCache], name: str, tasks: int) -> int:
    counter = 0

    async def increment(cache: RedisCache) -> None:
        nonlocal counter
        async with cache.lock(name, ttl_s=5, wait_s=30):
            seen = counter
            await asyncio.sleep(0.005)  # a lost update would show if another task got in here
            counter = seen + 1

    await asyncio.gather(*(increment(caches[i % len(caches)]) for i in range(tasks)))
    return counter


async def test_dead_redis_misses_and_drops_writes_without_raising(
    server: PrivateRedis, make_cache: _CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(retry_after_failure_s=60)
    await cache.set("k", b"v")
    await server.kill()
    with caplog.at_level(logging.WARNING, logger="bot.storage.cache"):
        assert await cache.get("k") is None
        await cache.set("k", b"v2")
        await cache.delete("k")
        assert await cache.get("k") is None
    assert await cache.ping() is False
    outage_warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_warnings) == 1


async def test_after_a_failure_redis_is_skipped_for_the_retry_period(
    server: PrivateRedis, make_cache: _CacheFactory
) -> None:
    cache = make_cache(retry_after_failure_s=60)
    await server.kill()
    assert await cache.get("k") is None
    await server.start()
    # The server is back and holds the key, yet within the retry period the cache does not
    # ask it: this is what spares every call a timeout while Redis is really down.
    direct = Redis.from_url(server.url)
    try:
        await direct.set(f"{make_cache.key_prefix}:k", b"there")
        assert await cache.get("k") is None
    finally:
        await direct.aclose()


async def test_cache_recovers_when_redis_comes_back(
    server: PrivateRedis, make_cache: _CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(retry_after_failure_s=0.2)
    await cache.set("k", b"v")
    await server.kill()
    assert await cache.get("k") is None
    await server.start()
    with caplog.at_level(logging.INFO, logger="bot.storage.cache"):
        for _ in range(int(START_LIMIT_S / POLL_STEP_S)):
            await cache.set("k", b"again")
            if await cache.get("k") == b"again":
                break
            await asyncio.sleep(POLL_STEP_S)
        else:
            pytest.fail("the cache did not use Redis again after it came back")
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_locks_exclude_in_process_while_redis_is_down(
    server: PrivateRedis, make_cache: _CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(retry_after_failure_s=60)
    async with cache.lock("conv", ttl_s=5, wait_s=1):
        await server.kill()  # the holder's release now fails; it must not raise
    with caplog.at_level(logging.WARNING, logger="bot.storage.cache"):
        assert await _count_under_lock([cache], "conv", tasks=20) == 20
    degraded = [r for r in caplog.records if "within this process only" in r.getMessage()]
    assert len(degraded) == 1


async def test_lock_excludes_across_two_caches(
    server: PrivateRedis, make_cache: _CacheFactory
) -> None:
    worker_a = make_cache(retry_after_failure_s=5)
    worker_b = make_cache(retry_after_failure_s=5)
    async with worker_a.lock("conv", ttl_s=5, wait_s=1):
        with pytest.raises(TimeoutError):
            async with worker_b.lock("conv", ttl_s=5, wait_s=0.2):
                pytest.fail("two workers held the same lock")
    assert await _count_under_lock([worker_a, worker_b], "conv", tasks=20) == 20


async def test_logs_never_show_the_url_password(caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()  # nothing listens here
    cache = RedisCache.from_url(
        f"redis://:hunter2-secret@127.0.0.1:{port}/0", key_prefix="p", socket_timeout_s=1.0
    )
    try:
        with caplog.at_level(logging.DEBUG):
            assert await cache.get("k") is None
            async with cache.lock("conv", ttl_s=1, wait_s=1):
                pass
    finally:
        await cache.aclose()
    assert caplog.records
    assert "hunter2-secret" not in caplog.text
