"""A client that opens a connection and sends nothing, or a request's line and headers a byte
now and then (slowloris), held that connection for as long as it liked: uvicorn has no time
limit on a request's head, only Parley's on a body (`http.body_timeout_s`) and uvicorn's on
the wait between two requests, which ends with the next request's first byte. Enough such
connections (one client, a few thousand sockets) use up the worker's file descriptors, and
every other visitor is refused. A head must now arrive within `http.header_timeout_s`: 408
and the connection closed where a part of it came, closed without a word where nothing came.
The real HTTP host (uvicorn) that serves the support API and the webhooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import websockets
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from adapters.kit.http import HttpHost
from bot.settings import HttpSettings
from tests.local_server import host_serving
from tests.ports import free_port

# Not shorter: a head sent whole at once must never meet it, however loaded the machine (the
# client and the server share this test's loop, and a pause of the loop sits between them).
TIMEOUT_S = 2.0
# Long enough for any head sent whole: the server waits no longer than TIMEOUT_S for one.
WITHIN_S = 10 * TIMEOUT_S + 5
SERVED = b"GET /healthz HTTP/1.1\r\nHost: parley\r\n\r\n"


async def _echo(socket_: WebSocket) -> None:
    await socket_.accept()
    await socket_.send_text(await socket_.receive_text())
    await socket_.close()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    port = free_port()
    host = HttpHost(HttpSettings(port=port, header_timeout_s=TIMEOUT_S))
    host.mount(WebSocketRoute("/echo", _echo))
    async with host_serving(host, port):
        yield port


async def _raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    try:
        async with asyncio.timeout(WITHIN_S):
            return await reader.read()  # to the end: the server closes the connection
    finally:
        writer.close()


async def _served(port: int) -> bytes:
    reader, writer = await _raw(port, SERVED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    return await _until_closed(reader, writer)


async def test_a_head_that_never_ends_gets_408_and_the_connection_is_closed(port: int) -> None:
    reader, writer = await _raw(port, b"POST /v1/messages HTTP/1.1\r\nHost: parley\r\n")
    answer = await _until_closed(reader, writer)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer[:200]
    assert b'"code": "request_timeout"' in rest
    assert (await _served(port)).endswith(b"ok")  # others are served as before


async def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    reader, writer = await _raw(port, b"")
    assert await _until_closed(reader, writer) == b""
    assert (await _served(port)).endswith(b"ok")


async def test_a_slow_head_on_a_kept_alive_connection_is_cut_too(port: int) -> None:
    reader, writer = await _raw(port, SERVED)
    async with asyncio.timeout(WITHIN_S):
        first = await reader.readuntil(b"ok")
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]
    # The next request's head begins and never ends: uvicorn's wait for the next request
    # stopped at its first byte.
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    await writer.drain()
    answer = await _until_closed(reader, writer)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:200]


async def test_a_head_sent_in_pieces_is_served(port: int) -> None:
    reader, writer = await _raw(port, b"GET /healthz HTTP/1.1\r\n")
    writer.write(b"Host: parley\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await _until_closed(reader, writer)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.endswith(b"ok")


async def test_a_websocket_is_not_timed_as_a_head(port: int) -> None:
    """An upgrade hands the connection to another protocol: its wait for a frame is no head,
    and the deadline armed for the upgrade request's head must not close it."""
    async with websockets.connect(f"ws://127.0.0.1:{port}/echo") as socket_:
        await asyncio.sleep(TIMEOUT_S * 3)  # past the head deadline, with nothing sent
        await socket_.send("still here")
        assert await socket_.recv() == "still here"


async def _answered_without_its_body(
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request announcing a body that /healthz answers without reading: the answer is in,
    the body's bytes come after it (h11 skips them)."""
    head = SERVED.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n")
    reader, writer = await _raw(port, head)
    async with asyncio.timeout(WITHIN_S):
        first = await reader.readuntil(b"ok")
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]
    return reader, writer


async def test_the_rest_of_an_answered_body_is_no_head(port: int) -> None:
    """Those bytes were taken for a head: once the deadline passed, a 408 was written after
    the 200, on a connection that had no request (a client sending its next request then
    reads the 408 as its answer). The connection is closed without a word, as any that
    sends nothing between requests."""
    reader, writer = await _answered_without_its_body(port)
    writer.write(b"hello")
    await writer.drain()
    assert await _until_closed(reader, writer) == b""


async def test_a_slow_head_after_the_rest_of_an_answered_body_is_cut(port: int) -> None:
    reader, writer = await _answered_without_its_body(port)
    writer.write(b"hello")
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends, after the body
    await writer.drain()
    answer = await _until_closed(reader, writer)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:200]
