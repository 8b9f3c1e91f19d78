"""The one way Parley connects to Redis (bot.storage.redis_client), against the real Redis
through a proxy that can drop or freeze connections: a dropped connection costs no failed
call, a frozen Redis costs one timeout (the call is not sent again), and every client Parley
opens is made this way."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeout

from bot.settings import RedisSettings
from bot.storage.redis_client import client_for
from tests.crash_cluster import TcpProxy

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
    made = client_for(RedisSettings(url=_through(redis_url, proxy), socket_timeout_s=0.5))
    assert made is not None
    yield made
    await made.aclose()


async def test_a_connection_redis_dropped_costs_no_failed_call(
    client: Redis, proxy: TcpProxy, key_prefix: str
) -> None:
    """A restart drops every pooled connection: the next call finds its connection broken
    and is sent once more, at once, on a new one."""
    await client.set(f"{key_prefix}:k", b"v")
    before = proxy.accepted
    proxy.cut(0)  # every open connection reset; new ones taken at once
    assert await client.get(f"{key_prefix}:k") == b"v"
    assert proxy.accepted == before + 1


async def test_a_frozen_redis_costs_one_timeout_and_the_call_is_not_sent_again(
    client: Redis, proxy: TcpProxy, key_prefix: str
) -> None:
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


async def test_a_subscriber_waits_for_replies_without_end(redis_url: str, proxy: TcpProxy) -> None:
    settings = RedisSettings(url=_through(redis_url, proxy))
    listening = client_for(settings, max_connections=2, subscriber=True)
    assert listening is not None
    kwargs = listening.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] is None
    assert kwargs["socket_connect_timeout"] == settings.socket_timeout_s
    assert listening.connection_pool.max_connections == 2
    await listening.aclose()


def test_no_redis_client_is_made_any_other_way() -> None:
    """Outside bot.storage.redis_client, Parley's code never builds a Redis client or pool
    itself (each such place had its own timeouts, pool and retries)."""
    makers = {"Redis", "BlockingConnectionPool", "ConnectionPool", "from_url"}
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
    """Redis(...), BlockingConnectionPool.from_url(...), Redis.from_url(...): a from_url of
    anything else (httpx.URL, a settings class) is not a Redis client."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in {"Redis", "BlockingConnectionPool", "ConnectionPool"}
    owner = func.value if isinstance(func, ast.Attribute) else None
    owner_name = getattr(owner, "id", None) or getattr(owner, "attr", None)
    return owner_name in {"Redis", "BlockingConnectionPool", "ConnectionPool", "redis"}
