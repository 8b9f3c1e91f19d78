"""Parley's one HTTP server: health endpoints, 503 for everything else while stopping, and a
port that cannot be bound as one line."""

from __future__ import annotations

import errno
import os
import socket

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters.kit.http import HttpHost
from bot.errors import AdapterError
from bot.settings import HttpSettings


async def _hook(request: Request) -> Response:
    return PlainTextResponse("taken")


def _client(host: HttpHost) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=host.app()), base_url="http://p")


async def test_health_and_a_mounted_route() -> None:
    host = HttpHost(HttpSettings())
    assert not host.in_use
    host.mount(Route("/hook", _hook, methods=["POST"]))
    assert host.in_use
    async with _client(host) as client:
        assert (await client.get("/healthz")).text == "ok"
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/hook")).text == "taken"


async def test_while_stopping_the_platform_is_told_to_send_again() -> None:
    host = HttpHost(HttpSettings())
    host.mount(Route("/hook", _hook, methods=["POST"]))
    host.draining = True
    async with _client(host) as client:
        refused = await client.post("/hook")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "unavailable"  # the API's own error shape
        assert (await client.get("/readyz")).status_code == 503  # the balancer stops sending
        assert (await client.get("/healthz")).status_code == 200  # but the process is alive


async def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = HttpHost(HttpSettings(port=port))
        with pytest.raises(AdapterError) as refused:
            await host.serve()
        # The address once, then the errno's words alone (not create_server's repeat of it).
        in_use = os.strerror(errno.EADDRINUSE)
        assert str(refused.value) == f"http: cannot listen on 127.0.0.1:{port}: {in_use}"
