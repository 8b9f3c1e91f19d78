"""An ASGI app of a test's own (a stand-in Bot API, Discord, a model server) served by uvicorn
inside the test's event loop on 127.0.0.1, signals left to pytest."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.types import ASGIApp

from adapters.kit.http import EmbeddedServer, HttpHost


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, port: int = 0) -> AsyncIterator[int]:
    """Serve `app` until the block ends; yields the port (a free one unless given)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as adapters.kit.http does
    sock.bind(("127.0.0.1", port))
    server = EmbeddedServer(uvicorn.Config(app, access_log=False, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def host_serving(host: HttpHost, port: int) -> AsyncIterator[None]:
    """A worker's HTTP host (`HttpHost.serve`, as `parley run` serves it: its own socket, h11
    and its deadlines) on 127.0.0.1:port until the block ends."""
    serving = asyncio.create_task(host.serve())
    try:
        for _ in range(200):  # until it listens
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        yield
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
