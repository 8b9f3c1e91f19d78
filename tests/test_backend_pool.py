"""The HTTP backend's connections (backends.pool): small pools side by side, against a real
HTTP server (tests/fault_server.py, which notes each TCP connection's client port)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import httpx
import pytest

from backends.base import GenerationRequest
from backends.openai_compat import OpenAICompatBackend, connection_limits
from backends.pool import SHARD_SIZE, ShardedTransport
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.fault_server import MODEL, FaultServer, fault_server


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with fault_server("pool") as started:
        yield started


def chat_body(n: int) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"q{n}"}], "stream": True}


async def hold_open(
    client: httpx.AsyncClient, stack: contextlib.AsyncExitStack, n: int
) -> list[httpx.Response]:
    """`n` replies at once, their headers read and their bodies left open."""
    return await asyncio.gather(
        *(
            stack.enter_async_context(client.stream("POST", "/v1/chat/completions", json=body))
            for body in map(chat_body, range(n))
        )
    )


async def read_all(replies: list[httpx.Response]) -> None:
    """Every body to its end, so that each connection can be kept (one closed with its body
    unread is dropped, whatever the pool)."""
    for reply in replies:
        await reply.aread()


def test_the_bound_is_one_pool_s_spread_over_small_ones() -> None:
    transport = ShardedTransport(connection_limits(64))
    assert transport.pools == 64 // SHARD_SIZE
    assert ShardedTransport(connection_limits(3)).pools == 1
    assert ShardedTransport(connection_limits(9)).pools == 2


async def test_replies_at_once_spread_over_the_pools_and_their_connections_stay(
    server: FaultServer,
) -> None:
    transport = ShardedTransport(connection_limits(32))  # 4 pools of 8
    async with httpx.AsyncClient(base_url=server.base_url, transport=transport) as client:
        async with contextlib.AsyncExitStack() as stack:
            replies = await hold_open(client, stack, 12)
            assert transport.in_flight == (3, 3, 3, 3)
            await read_all(replies)
        assert transport.in_flight == (0, 0, 0, 0)
        assert len(server.peers) == 12
        # The next burst finds those connections idle in their pools: no new ones.
        async with contextlib.AsyncExitStack() as stack:
            await read_all(await hold_open(client, stack, 12))
        assert len(server.peers) == 12


async def test_one_request_at_a_time_keeps_one_warm_connection(server: FaultServer) -> None:
    settings = BackendSettings(kind="openai", base_url=server.base_url, model=MODEL)
    backend = OpenAICompatBackend(settings)  # its own transport: the sharded one
    await backend.start()
    try:
        for n in range(5):
            request = GenerationRequest([ChatMessage(Role.USER, f"turn {n}")], max_tokens=4)
            async with contextlib.aclosing(backend.stream(request)) as chunks:
                texts = [chunk.text async for chunk in chunks]
            assert "".join(texts).startswith("pool-")
    finally:
        await backend.aclose()
    assert server.chat_requests == 5
    assert len(server.peers) == 1  # /v1/models and every reply on the first pool's one


async def test_a_request_that_fails_gives_its_place_back() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    transport = ShardedTransport(connection_limits(16))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=transport) as c:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await c.get("/health")
    assert transport.in_flight == (0, 0)


async def test_a_cancelled_reply_gives_its_place_back(server: FaultServer) -> None:
    transport = ShardedTransport(connection_limits(16))
    async with httpx.AsyncClient(base_url=server.base_url, transport=transport) as client:
        reading = asyncio.Event()

        async def read_slowly() -> None:
            async with client.stream("POST", "/v1/chat/completions", json=chat_body(1)) as reply:
                async for _ in reply.aiter_lines():
                    reading.set()
                    await asyncio.sleep(10)

        task = asyncio.create_task(read_slowly())
        await reading.wait()
        assert transport.in_flight == (1, 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.in_flight == (0, 0)
