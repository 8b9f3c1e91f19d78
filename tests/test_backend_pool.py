"""The HTTP backend's connections (backends.pool): small pools side by side, against a real
HTTP server (tests/fault_server.py, which notes each TCP connection's client port)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backends.base import GenerationRequest
from backends.openai_compat import OpenAICompatBackend, connection_limits
from backends.pool import SHARD_SIZE, ShardedTransport
from bot.settings import BackendSettings
from bot.types import ChatMessage, Role
from tests.fault_server import MODEL, FaultServer, fault_server
from tests.local_server import serving
from tests.ports import free_port


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
    port = free_port()  # nobody listens there
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


async def test_the_connection_bound_holds_over_all_pools(server: FaultServer) -> None:
    """At `max_connections` in flight a request waits for any pool's connection, and gives up
    after its pool timeout as one pool's request does (ClientBusy in the backend)."""
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=16)
    transport = ShardedTransport(limits)  # 2 pools
    async with (
        httpx.AsyncClient(base_url=server.base_url, transport=transport) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        replies = [
            await stack.enter_async_context(
                client.stream("POST", "/v1/chat/completions", json=chat_body(n))
            )
            for n in range(3)
        ]
        assert transport.in_flight == (2, 1)
        with pytest.raises(httpx.PoolTimeout):
            await client.post("/v1/chat/completions", json=chat_body(3), timeout=0.2)
        waiting = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat_body(4), timeout=10)
        )
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await replies[1].aread()
        await replies[1].aclose()  # the second pool's: the waiting request takes its place
        assert (await waiting).status_code == 200
        await read_all([replies[0], replies[2]])
    assert transport.in_flight == (0, 0)


async def test_idle_connections_kept_are_the_limit_in_all(server: FaultServer) -> None:
    transport = ShardedTransport(httpx.Limits(max_connections=64, max_keepalive_connections=9))
    assert transport.pools == 2
    async with httpx.AsyncClient(base_url=server.base_url, transport=transport) as client:
        async with contextlib.AsyncExitStack() as stack:
            await read_all(await hold_open(client, stack, 12))
        assert len(server.peers) == 12
        async with contextlib.AsyncExitStack() as stack:
            await read_all(await hold_open(client, stack, 12))
    assert len(server.peers) == 12 + 12 - 9  # 9 kept (5 + 4), 3 closed and opened again


async def test_a_proxy_in_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx applies HTTP_PROXY and NO_PROXY only with its own transport: with one in the
    environment the backend keeps it."""
    seen: list[str] = []

    async def proxy(request: Request) -> Response:
        seen.append(request.method)
        if request.method == "GET":  # /v1/models, asked of the proxy in absolute form
            return JSONResponse({"data": [{"id": MODEL, "max_model_len": 2048}]})
        return Response(status_code=404)

    port = free_port()  # the server itself: nobody listens there
    async with serving(
        Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])])
    ) as via:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{via}")
        settings = BackendSettings(kind="openai", base_url=f"http://127.0.0.1:{port}", model=MODEL)
        backend = OpenAICompatBackend(settings)
        try:
            await backend.start()
        finally:
            await backend.aclose()
    assert backend.capabilities.max_model_len == 2048
    assert seen[0] == "GET"
