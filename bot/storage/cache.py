"""The rebuildable cache: in process, or in Redis.

`MemoryCache` is the embedded default: one LRU holds its entries, its counters and the objects
of its read-throughs as they are (no encoding: this process is their only writer). `RedisCache`
shares all of it between workers, objects encoded; it never raises, because everything it
holds can be rebuilt from SQL: while Redis is down it answers misses at once, and objects are
loaded from SQL. Who runs a conversation's turns is not the cache's business: that is the
Store's turn lease, in SQL.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from bot.errors import StorageError
from bot.outage import Outage
from bot.settings import RedisSettings
from bot.storage import keys
from bot.storage.base import Cache, Codec, ReadThrough
from bot.storage.redis_client import connect

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

T = TypeVar("T")
Load = Callable[[int], Awaitable[T]]
KeyOf = Callable[[int], str]


def _deadline(ttl_s: float | None) -> float | None:
    return None if ttl_s is None else time.monotonic() + ttl_s


class MemoryCache:
    """Entries expire on a monotonic clock; the least recently used go first once
    `max_entries` is reached (windows, chat preferences, handoff states and counters alike).
    Expired entries are dropped when next read or evicted."""

    def __init__(self, max_entries: int = 30_000) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[object, float | None]] = OrderedDict()

    def _find(self, key: str) -> object | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def _keep(self, key: str, value: object, expires_at: float | None) -> None:
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        found = self._find(key)
        return found if isinstance(found, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._keep(key, value, _deadline(ttl_s))

    def _keep_absent(self, key: str, value: object, ttl_s: float | None) -> None:
        """Keep `value` only where `key` holds nothing (a load never replaces a write)."""
        if self._find(key) is None:
            self._keep(key, value, _deadline(ttl_s))

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._keep_absent(key, value, ttl_s)

    async def set_newer(self, key: str, value: bytes, order: str, ttl_s: float) -> None:
        held = self._find(_order_key(key))  # no await in between: one step
        if isinstance(held, str) and held > order:
            return
        self._keep(key, value, _deadline(ttl_s))
        self._keep(_order_key(key), order, _deadline(ttl_s))

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def count(self, key: str, window_s: float, *, once: str | None = None) -> int:
        if once is not None and isinstance(seen := self._find(once), int):
            return seen
        hits = self._find(key)
        if isinstance(hits, int):  # the window keeps the expiry of its first hit
            hits += 1
            self._keep(key, hits, self._entries[key][1])
        else:
            hits = 1
            self._keep(key, hits, _deadline(window_s))
        if once is not None:
            self._keep(once, hits, _deadline(window_s))
        return hits

    def read_through(
        self, key: KeyOf, load: Load[T], codec: Codec[T], *, ttl_s: float
    ) -> ReadThrough[T]:
        # Neither encoding nor check: the objects stay objects, and this process wrote them.
        return _HeldObjects(self, key, load, ttl_s)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()


class _HeldObjects(Generic[T]):
    """Objects in a MemoryCache's LRU, as they are."""

    def __init__(self, cache: MemoryCache, key: KeyOf, load: Load[T], ttl_s: float) -> None:
        self._cache, self._key, self._load, self._ttl_s = cache, key, load, ttl_s

    async def get(self, id_: int) -> T:
        found = self._cache._find(self._key(id_))
        if found is not None:
            return cast(T, found)
        value = await self._load(id_)
        self._cache._keep_absent(self._key(id_), value, self._ttl_s)
        return value

    async def put(self, id_: int, value: T) -> None:
        self._cache._keep(self._key(id_), value, _deadline(self._ttl_s))

    async def refresh(self, id_: int) -> None:
        await self.put(id_, await self._load(id_))

    async def invalidate(self, id_: int) -> None:
        await self._cache.delete(self._key(id_))


class _CopiedObjects(Generic[T]):
    """Objects encoded in a shared cache; a copy is checked with `codec.current` before use."""

    def __init__(
        self, cache: Cache, key: KeyOf, load: Load[T], codec: Codec[T], ttl_s: float
    ) -> None:
        self._cache, self._key, self._load, self._codec = cache, key, load, codec
        self._ttl_s = ttl_s

    async def get(self, id_: int) -> T:
        copy = self._decoded(self._key(id_), await self._cache.get(self._key(id_)))
        if copy is not None and await self._codec.current(id_, copy):
            return copy
        value = await self._load(id_)
        if copy is None:  # a miss: kept only where nothing was put while it loaded
            await self._cache.add(self._key(id_), self._codec.encode(value), self._ttl_s)
        else:  # a stale or unreadable copy is replaced
            await self.put(id_, value)
        return value

    def _decoded(self, key: str, raw: bytes | None) -> T | None:
        if raw is None:
            return None
        try:
            return self._codec.decode(raw)
        except (ValueError, TypeError):  # written by another version: loaded again
            logger.warning("unreadable cache entry %s, loaded from SQL", key)
            return None

    async def put(self, id_: int, value: T) -> None:
        await self._cache.set(self._key(id_), self._codec.encode(value), self._ttl_s)

    async def refresh(self, id_: int) -> None:
        await self.put(id_, await self._load(id_))

    async def invalidate(self, id_: int) -> None:
        await self._cache.delete(self._key(id_))


# KEYS[1] the counter, KEYS[2] the hit's name, ARGV[1] the window in ms. A name seen before
# (and still holding a count) gets that count back; otherwise the counter goes up, its window
# starting at its first hit, and the name keeps the count for the window.
_COUNT_ONCE = """
local seen = tonumber(redis.call('GET', KEYS[2]))
if seen then return seen end
local hits = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
redis.call('SET', KEYS[2], hits, 'PX', ARGV[1])
return hits
"""

# Cache.set_newer: the value and its order, unless the order held is later.
_SET_NEWER = """
local held = redis.call('GET', KEYS[2])
if held and held > ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""


class RedisRefused(StorageError):
    """Redis answered and refused the connection `redis.url` describes: a setting to fix, not
    an outage to wait out."""


def redis_refusal(exc: BaseException) -> str | None:
    """What is wrong with `redis.url` when Redis refused to set up its connection: a password
    it does not take or none where it needs one, a database number it does not have, a user
    its ACL does not let run the command. None for anything else (down, slow, loading), and
    for an error the redis client did not raise (the optional extra is not imported then)."""
    if not type(exc).__module__.startswith("redis."):
        return None
    from redis.exceptions import (
        AuthenticationError,
        AuthorizationError,
        NoPermissionError,
        ResponseError,
    )

    if isinstance(exc, AuthenticationError | AuthorizationError):
        return (
            "Redis refused the login (a wrong password, or none where it needs one): "
            "check the user and password in redis.url"
        )
    if isinstance(exc, NoPermissionError):
        return "Redis's ACL does not let redis.url's user run Parley's commands (NOPERM)"
    if isinstance(exc, ResponseError) and "DB index" in str(exc):  # SELECT's only refusal
        return (
            "Redis has no database with redis.url's number (its path, /0): Redis numbers "
            "them from 0 below its `databases` setting, 16 by default"
        )
    return None


def _order_key(key: str) -> str:
    """Where Cache.set_newer keeps the order of the value under `key`."""
    return f"{key}:order"


class RedisCache:
    """Entries under `{key_prefix}:{key}`, keys from bot.storage.keys."""

    def __init__(
        self, client: Redis, *, key_prefix: str, retry_after_failure_s: float = 5.0
    ) -> None:
        # redis is the optional [redis] extra: imported here so MemoryCache needs none of it.
        from redis.exceptions import RedisError

        self._client = client
        self._prefix = key_prefix
        self._outage = Outage(
            retry_after_failure_s, meanwhile="the cache is bypassed", logger=logger
        )
        self._failures: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._count_once = client.register_script(_COUNT_ONCE)
        self._set_newer = client.register_script(_SET_NEWER)

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
        client = connect(
            url, timeout_s=socket_timeout_s, max_connections=max_connections, retry_dropped=True
        )
        return cls(client, key_prefix=key_prefix, retry_after_failure_s=retry_after_failure_s)

    def _key(self, key: str) -> str:
        return keys.cached(self._prefix, key)

    async def _attempt(self, command: Callable[[], Awaitable[T]]) -> T | None:
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

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else max(1, math.ceil(ttl_s * 1000))
        await self._attempt(lambda: self._client.set(self._key(key), value, px=px, nx=True))

    async def set_newer(self, key: str, value: bytes, order: str, ttl_s: float) -> None:
        px = max(1, math.ceil(ttl_s * 1000))
        names = [self._key(key), self._key(_order_key(key))]
        await self._attempt(lambda: self._set_newer(keys=names, args=[value, order, px]))

    async def delete(self, key: str) -> None:
        await self._attempt(lambda: self._client.delete(self._key(key)))

    async def count(self, key: str, window_s: float, *, once: str | None = None) -> int:
        px = max(1, math.ceil(window_s * 1000))

        async def hit() -> int:
            # One round trip: INCR, and start the window on the first hit (NX keeps it fixed).
            pipe = self._client.pipeline(transaction=False)
            pipe.incr(self._key(key))
            pipe.pexpire(self._key(key), px, nx=True)
            hits, _ = await pipe.execute()
            return int(hits)

        async def hit_once(name: str) -> int:
            # One round trip, atomic: two deliveries of one message at once count once.
            keys_ = [self._key(key), self._key(name)]
            return int(await self._count_once(keys=keys_, args=[px]))

        return await self._attempt(hit if once is None else lambda: hit_once(once)) or 0

    def read_through(
        self, key: KeyOf, load: Load[T], codec: Codec[T], *, ttl_s: float
    ) -> ReadThrough[T]:
        return _CopiedObjects(self, key, load, codec, ttl_s)

    async def ping(self) -> None:
        # Unlike get/set, a health check always asks Redis, even during the retry pause.
        try:
            await self._client.ping()
        except self._failures as exc:
            self._outage.failed(exc)
            refusal = redis_refusal(exc)
            if refusal is not None:
                raise RedisRefused(refusal) from exc
            raise StorageError(f"Redis did not answer PING ({type(exc).__name__})") from exc
        self._outage.succeeded()

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
