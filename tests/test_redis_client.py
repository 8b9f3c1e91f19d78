"""The one way Parley connects to Redis (bot.storage.redis_client), against the real Redis
through a proxy that can drop or freeze connections: the cache's call on a dropped connection
is sent again, no other client's ever is; a frozen Redis costs one timeout and the call is
not sent again; a subscription outlives the timeout; closing a client closes its
connections; and every client Parley opens is made this way."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from bot.conversation.delivery import beat, holder_alive
from bot.settings import RedisSettings
from bot.storage import keys
from bot.storage.base import DeliveryState
from bot.storage.cache import RedisCache
from bot.storage.redis_client import client_for
from bot.types import utcnow
from tests.crash_cluster import TcpProxy
from tests.redis_server import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    target = urlsplit(redis_url)
    through = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await through.start()
    yield through
    through.frozen = False
    await through.aclose()


def _through(redis_url: str, proxy: TcpProxy) -> SecretStr:
    """`redis_url` (its database, its password), reached through `proxy`."""
    target = urlsplit(redis_url)
    netloc = target.netloc.rpartition("@")[0] + "@" if "@" in target.netloc else ""
    return SecretStr(f"redis://{netloc}127.0.0.1:{proxy.port}{target.path}")


@pytest.fixture
async def client(redis_url: str, proxy: TcpProxy) -> AsyncIterator[Redis]:
    """A client whose calls must succeed: a timeout far above a loaded machine's stalls."""
    made = client_for(RedisSettings(url=_through(redis_url, proxy), socket_timeout_s=5.0))
    assert made is not None
    yield made
    await made.aclose()


@pytest.fixture
async def short_client(redis_url: str, proxy: TcpProxy) -> AsyncIterator[Redis]:
    """A client for a test that waits for its timeout: 0.5 s."""
    made = client_for(RedisSettings(url=_through(redis_url, proxy), socket_timeout_s=0.5))
    assert made is not None
    yield made
    await made.aclose()


async def test_the_cache_sends_a_call_whose_connection_redis_dropped_again(
    redis_url: str, proxy: TcpProxy, key_prefix: str
) -> None:
    """A restart drops every pooled connection: the cache's next call finds its connection
    broken and is sent once more, at once, on a new one."""
    settings = RedisSettings(url=_through(redis_url, proxy), socket_timeout_s=5.0)
    cache = client_for(settings, retry_dropped=True)
    assert cache is not None
    try:
        await cache.set(f"{key_prefix}:k", b"v")
        before = proxy.accepted
        proxy.cut(0)  # every open connection reset; new ones taken at once
        assert await cache.get(f"{key_prefix}:k") == b"v"
        assert proxy.accepted == before + 1
    finally:
        await cache.aclose()


async def test_other_clients_never_send_a_call_twice(
    client: Redis, proxy: TcpProxy, key_prefix: str
) -> None:
    """A gate's take or an event log's append sent again after its reply was lost would
    run twice: without `retry_dropped` a dropped connection is one failed call."""
    assert await client.incr(f"{key_prefix}:n") == 1
    proxy.cut(0)
    with pytest.raises(RedisConnectionError):
        await client.incr(f"{key_prefix}:n")
    assert await client.incr(f"{key_prefix}:n") == 2  # the failed one did not run


async def test_a_frozen_redis_costs_one_timeout_and_the_call_is_not_sent_again(
    short_client: Redis, proxy: TcpProxy, key_prefix: str
) -> None:
    client = short_client
    await client.set(f"{key_prefix}:k", b"v")
    before = proxy.accepted
    proxy.frozen = True
    with pytest.raises(RedisTimeout):
        await client.incr(f"{key_prefix}:n")
    assert proxy.accepted == before  # no second try on another connection
    proxy.frozen = False
    # The one INCR that was sent reaches Redis as it thaws, and only that one.
    assert await client.get(f"{key_prefix}:k") == b"v"
    assert await client.get(f"{key_prefix}:n") == b"1"


async def test_a_subscriber_waits_for_messages_longer_than_the_timeout(
    redis_url: str, proxy: TcpProxy, client: Redis, key_prefix: str
) -> None:
    settings = RedisSettings(url=_through(redis_url, proxy), socket_timeout_s=0.5)
    listening = client_for(settings, max_connections=2, subscriber=True)
    assert listening is not None
    channel = f"{key_prefix}:channel"
    try:
        async with listening.pubsub() as pubsub:
            await pubsub.subscribe(channel)
            assert (await pubsub.get_message(timeout=5.0) or {}).get("type") == "subscribe"
            await asyncio.sleep(3 * settings.socket_timeout_s)  # idle past the timeout
            await client.publish(channel, b"hello")
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            assert message is not None and message["data"] == b"hello"
    finally:
        await listening.aclose()


async def test_closing_a_client_closes_its_connections(
    private_redis: PrivateRedis, redis_url: str, key_prefix: str
) -> None:
    """The client owns its pool (a Telegram or Discord gate's client left them open).
    Counted on a redis-server of its own: the shared one's count is every test process's
    (make test runs several), and another file's connections opened meanwhile (`other`
    here) kept it above the count before, the wait ending in a timeout."""
    made = client_for(RedisSettings(url=SecretStr(private_redis.url)))
    direct = client_for(RedisSettings(url=SecretStr(private_redis.url)), max_connections=2)
    other = client_for(RedisSettings(url=SecretStr(redis_url)), max_connections=3)
    assert made is not None and direct is not None and other is not None
    try:
        before = await _clients(direct)
        await asyncio.gather(*(made.incr(f"{key_prefix}:{n}") for n in range(3)))
        await asyncio.gather(*(other.ping() for _ in range(3)))  # another test file's
        assert await _clients(direct) >= before + 3
        await made.aclose()
        async with asyncio.timeout(10):
            while await _clients(direct) > before:  # noqa: ASYNC110 - the server's count
                await asyncio.sleep(0.05)
    finally:
        await other.aclose()
        await direct.aclose()


async def _clients(direct: Redis) -> int:
    return int((await direct.info("clients"))["connected_clients"])


def test_no_redis_client_is_made_any_other_way() -> None:
    """Outside bot.storage.redis_client, Parley's code never builds a Redis client or pool
    itself (each such place had its own timeouts, pool and retries)."""
    makers = {"Redis", "StrictRedis", "BlockingConnectionPool", "ConnectionPool", "from_url",
              "from_pool"}  # fmt: skip
    found = []
    for folder in ("bot", "adapters", "backends"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "bot" / "storage" / "redis_client.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in makers and _is_redis(node):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def _is_redis(call: ast.Call) -> bool:
    """Redis(...), BlockingConnectionPool.from_url(...), Redis.from_url(...),
    redis.asyncio.from_url(...): a from_url of anything else (a settings class) is not."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in {"Redis", "StrictRedis", "BlockingConnectionPool", "ConnectionPool"}
    owner = func.value if isinstance(func, ast.Attribute) else None
    owner_name = getattr(owner, "id", None) or getattr(owner, "attr", None)
    # Redis.from_url, Redis.from_pool, a pool's from_url, redis.asyncio.from_url.
    owners = {"Redis", "StrictRedis", "BlockingConnectionPool", "ConnectionPool", "redis"}
    return owner_name in owners | {"asyncio", "aioredis"}


async def test_a_redis_blip_makes_no_live_worker_look_dead(
    redis_url: str, proxy: TcpProxy, key_prefix: str
) -> None:
    """The cache skips its calls for retry_after_failure_s after a failure: the liveness
    key read then as absent, so for 5 s after its own blip a worker took over every answer a
    live worker was showing; and a worker back from a blip wrote no heartbeat for as long."""
    direct = RedisCache.from_url(redis_url, key_prefix=key_prefix)
    cut_off = RedisCache.from_url(
        _through(redis_url, proxy).get_secret_value(), key_prefix=key_prefix,
        socket_timeout_s=5.0, retry_after_failure_s=60,
    )  # fmt: skip
    try:
        await direct.set(keys.alive("worker-a"), b"1", ttl_s=60)
        showing = DeliveryState(1, 1, 7, "worker-a", utcnow() - timedelta(seconds=8), {})
        assert await holder_alive(cut_off, showing, grace_s=15)
        proxy.cut(0.3)
        assert await cut_off.get("anything") is None  # the blip: a failure, then the pause
        await asyncio.sleep(0.4)
        assert await holder_alive(cut_off, showing, grace_s=15)  # back: it reads the key
        # The same worker's heartbeat, just after its blip, is written at once.
        proxy.cut(0.3)
        assert await cut_off.get("anything") is None
        await asyncio.sleep(0.4)
        stop = asyncio.Event()
        beating = asyncio.create_task(beat(cut_off, "worker-b", stop))
        await asyncio.sleep(0.2)
        stop.set()
        await beating
        assert await direct.get(keys.alive("worker-b")) == b"1"
    finally:
        await direct.delete(keys.alive("worker-a"))
        await direct.delete(keys.alive("worker-b"))
        await direct.aclose()
        await cut_off.aclose()
