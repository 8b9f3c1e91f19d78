"""The rebuildable cache and the conversation locks: in process, or in Redis.

`MemoryCache` is the embedded default. `RedisCache` shares entries and locks between workers;
it never raises from get/set/delete, because everything it holds can be rebuilt from SQL. While
Redis is down it answers misses at once and its locks exclude within the process only (they
say so: the manager then adds a lease in SQL, `Store.lease`), and the store's SQL fence
(`Store.record_reply`) stops two workers from recording two answers to one message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from bot.keepalive import renewing
from bot.outage import Outage
from bot.settings import RedisSettings
from bot.storage.base import Cache

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.lock import Lock as RedisLock

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Seconds a command waits for a pooled connection before it counts as a failure.
POOL_WAIT_S = 10.0


@dataclass(slots=True)
class _NamedLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holder and waiters: the entry is dropped when it reaches 0


class _NamedLocks:
    """One asyncio.Lock per name, kept only while some task holds or waits for it."""

    def __init__(self) -> None:
        self._entries: dict[str, _NamedLock] = {}

    @asynccontextmanager
    async def hold(self, name: str, wait_s: float) -> AsyncIterator[None]:
        entry = self._entries.setdefault(name, _NamedLock())
        entry.users += 1
        try:
            # Alone on the entry (no holder, nobody queued): taken at once, no timer to arm.
            await _acquire_within(entry.lock, name, wait_s, alone=entry.users == 1)
            try:
                yield
            finally:
                entry.lock.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[name]


async def _acquire_within(lock: asyncio.Lock, name: str, wait_s: float, *, alone: bool) -> None:
    if alone and not lock.locked():
        await lock.acquire()  # free, nobody queued: taken at once, no timer to arm and cancel
        return
    try:
        async with asyncio.timeout(wait_s):
            await lock.acquire()
    except TimeoutError:
        raise TimeoutError(f"lock {name!r} not acquired within {wait_s:g}s") from None


class MemoryCache:
    """The in-process cache: entries expire on a monotonic clock, the least recently used go
    first once `max_entries` is reached. Expired entries are dropped when next read or evicted.
    """

    shared = False

    def __init__(self, max_entries: int = 10000) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._locks = _NamedLocks()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        expires_at = None if ttl_s is None else time.monotonic() + ttl_s
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def count(self, key: str, window_s: float) -> int:
        # A counter is an entry too: same expiry, same eviction.
        raw = await self.get(key)
        if raw is None:
            await self.set(key, b"1", window_s)
            return 1
        value, expires_at = self._entries[key]
        hits = int(value) + 1
        self._entries[key] = (str(hits).encode(), expires_at)
        return hits

    def lock(self, name: str, *, ttl_s: float, wait_s: float) -> AbstractAsyncContextManager[bool]:
        # ttl_s bounds a lock whose holder died; in one process the holder cannot die alone.
        return self._exclusive(name, wait_s)

    @asynccontextmanager
    async def _exclusive(self, name: str, wait_s: float) -> AsyncIterator[bool]:
        async with self._locks.hold(name, wait_s):
            yield True  # an in-process cache serves one process: this is all the exclusion

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._entries.clear()


class _Outage(Outage):
    """The cache's outage, which also says once that locks hold within this process only."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(retry_after_s, meanwhile="the cache is bypassed", logger=logger)
        self._lock_warned = False

    def succeeded(self) -> None:
        super().succeeded()
        self._lock_warned = False

    def lock_degraded(self) -> None:
        if not self._lock_warned:
            self._lock_warned = True
            logger.warning(
                "Redis is unreachable: locks exclude within this process only until it is "
                "back; conversations are leased in SQL meanwhile"
            )


class RedisCache:
    """Entries under `{key_prefix}:{key}`, locks under `{key_prefix}:lock:{name}`."""

    shared = True

    def __init__(
        self, client: Redis, *, key_prefix: str, retry_after_failure_s: float = 5.0
    ) -> None:
        # redis is the optional [redis] extra: imported here so MemoryCache needs none of it.
        from redis.exceptions import LockError, RedisError

        self._client = client
        self._prefix = key_prefix
        self._outage = _Outage(retry_after_failure_s)
        self._local_locks = _NamedLocks()
        self._failures: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._lock_lost: type[BaseException] = LockError

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str,
        socket_timeout_s: float = 1.0,
        retry_after_failure_s: float = 5.0,
        max_connections: int = 50,
    ) -> RedisCache:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # A blocking pool makes a burst of turns queue for a connection instead of failing
        # with "Too many connections" (which would degrade every lock to in-process).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=POOL_WAIT_S,
            socket_connect_timeout=socket_timeout_s,
            socket_timeout=socket_timeout_s,
            # Idle pooled connections are checked before use, so a restart costs no failed call.
            health_check_interval=30,
            # One retry replaces a connection Redis dropped; more would only multiply the
            # timeout paid when an outage starts.
            retry=Retry(NoBackoff(), 1),
        )
        client = Redis(connection_pool=pool)
        return cls(client, key_prefix=key_prefix, retry_after_failure_s=retry_after_failure_s)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def _attempt(self, command: Callable[[], Awaitable[_T]]) -> _T | None:
        """Run one Redis command; None if it failed or Redis is in its retry pause."""
        if not self._outage.should_try():
            return None
        try:
            result = await command()
        except self._failures as exc:
            self._outage.failed(exc)
            return None
        self._outage.succeeded()
        return result

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._attempt(lambda: self._client.get(self._key(key)))
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else max(1, math.ceil(ttl_s * 1000))
        await self._attempt(lambda: self._client.set(self._key(key), value, px=px))

    async def delete(self, key: str) -> None:
        await self._attempt(lambda: self._client.delete(self._key(key)))

    async def count(self, key: str, window_s: float) -> int:
        px = max(1, math.ceil(window_s * 1000))

        async def hit() -> int:
            # One round trip: INCR, and start the window on the first hit (NX keeps it fixed).
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(self._key(key))
            pipe.pexpire(self._key(key), px, nx=True)
            hits, _ = await pipe.execute()
            return int(hits)

        return await self._attempt(hit) or 0

    def lock(self, name: str, *, ttl_s: float, wait_s: float) -> AbstractAsyncContextManager[bool]:
        return self._hold(name, ttl_s, wait_s)

    @asynccontextmanager
    async def _hold(self, name: str, ttl_s: float, wait_s: float) -> AsyncIterator[bool]:
        deadline = asyncio.get_running_loop().time() + wait_s
        # The in-process lock comes first: this process's tasks queue on it instead of polling
        # Redis, and exclusion within the process holds even while Redis is down.
        async with self._local_locks.hold(name, wait_s):
            left_s = max(0.0, deadline - asyncio.get_running_loop().time())
            shared = await self._acquire_shared(name, ttl_s, left_s)
            if shared is None:
                yield False  # Redis is down: exclusive within this process only
                return
            async with self._extended(shared, name, ttl_s):
                yield True

    async def _acquire_shared(self, name: str, ttl_s: float, wait_s: float) -> RedisLock | None:
        """The Redis lock, or None when Redis is down (the caller goes on in-process only)."""
        if not self._outage.should_try():
            self._outage.lock_degraded()
            return None
        lock: RedisLock = self._client.lock(
            self._key(f"lock:{name}"), timeout=ttl_s, thread_local=False
        )
        try:
            acquired = await lock.acquire(blocking_timeout=wait_s)
        except self._failures as exc:
            self._outage.failed(exc)
            self._outage.lock_degraded()
            return None
        self._outage.succeeded()
        if not acquired:
            raise TimeoutError(f"lock {name!r} not acquired within {wait_s:g}s")
        return lock

    @asynccontextmanager
    async def _extended(self, lock: RedisLock, name: str, ttl_s: float) -> AsyncIterator[None]:
        async def extend() -> bool:
            try:
                await lock.extend(ttl_s, replace_ttl=True)
            except self._lock_lost:
                logger.warning(
                    "lock %r expired while held (a stall past its ttl, or Redis restarted); "
                    "the store's SQL fence still prevents a second answer",
                    name,
                )
                return False
            except self._failures as exc:
                # Redis is down: the key may outlive the outage, so keep trying to extend it.
                self._outage.failed(exc)
            return True

        try:
            async with renewing(extend, ttl_s / 3, name=f"extend lock {name}"):
                yield
        finally:
            await self._release(lock)

    async def _release(self, lock: RedisLock) -> None:
        # Already expired, or Redis is down: either way the key lapses within ttl_s.
        with suppress(*self._failures):
            await lock.release()

    async def ping(self) -> bool:
        # Unlike get/set, a health check always asks Redis, even during the retry pause.
        try:
            await self._client.ping()
        except self._failures as exc:
            self._outage.failed(exc)
            return False
        self._outage.succeeded()
        return True

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


def build_cache(redis_settings: RedisSettings) -> Cache:
    """RedisCache when a Redis URL is configured, else the in-process MemoryCache."""
    url = redis_settings.url.get_secret_value() if redis_settings.url else ""
    if not url:
        return MemoryCache()
    return RedisCache.from_url(
        url,
        key_prefix=redis_settings.key_prefix,
        socket_timeout_s=redis_settings.socket_timeout_s,
        retry_after_failure_s=redis_settings.retry_after_failure_s,
        max_connections=redis_settings.max_connections,
    )
