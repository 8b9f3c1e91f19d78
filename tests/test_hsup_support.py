"""Hostile review of the support channel (prefix hsup): the real app and support adapter
served by uvicorn over real PostgreSQL and Redis, as an attacker would call them. Each test
failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters.kit.http import HttpHost
from bot.settings import HttpSettings
from bot.storage import migrate
from tests.local_server import host_serving
from tests.ports import free_port
from tests.support_helpers import support_worker


@pytest.fixture
async def pg(postgres_url: str) -> str:
    await migrate.upgrade(postgres_url)
    return postgres_url


@pytest.mark.postgres
@pytest.mark.redis
async def test_one_ipv6_network_is_one_address_for_the_limits(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    """A client on IPv6 holds a whole /64 (a home line, any rented server) and picks its
    source address in it at will: counted per address, each of its requests came from a new
    address, so `ip_requests` (and `streams_per_address`) never held it. Counted per /64 now;
    an IPv4 client seen as an IPv4-mapped IPv6 address (a dual-stack listener) is still
    counted alone, not with every other IPv4 client. The addresses arrive as a proxy on the
    same machine names them (X-Forwarded-For, which uvicorn trusts from loopback)."""
    async with support_worker(
        pg, redis_url=redis_url, key_prefix=key_prefix, ip_requests=3, rate_window_s=20
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as client:

            async def new_visitor_from(address: str) -> int:
                headers = {"X-Parley-Site-Key": site.public_key, "X-Forwarded-For": address}
                return (await client.post("/v1/visitors", headers=headers)).status_code

            rotated = [await new_visitor_from(f"2001:db8:1:2::{n:x}") for n in range(1, 5)]
            other_network = await new_visitor_from("2001:db8:1:3::1")
            mapped = [await new_visitor_from(f"::ffff:192.0.2.{n}") for n in range(1, 5)]
    assert rotated == [201, 201, 201, 429]
    assert other_network == 201
    assert mapped == [201, 201, 201, 201]


async def test_a_huge_request_header_is_refused_before_it_is_held_in_memory() -> None:
    """The HTTP server that carries the support API and Chatwoot's webhooks kept reading a
    header for as long as a client sent it (httptools, uvicorn's default parser, has no
    limit): one 200 MB header took 400 MB of the worker's memory and was answered 200, so a
    few connections could have the worker killed for memory. Now a request whose line and
    headers pass 64 KiB is refused (4xx) and its connection closed, while an ordinary one
    with an 8 KB header is still served."""
    port = free_port()
    host = HttpHost(HttpSettings(port=port))
    host.mount(Route("/hook", _ok, methods=["GET"]))
    async with host_serving(host, port):
        assert await _status_with_header(port, 8_000) == b"200"
        status = await _status_with_header(port, 4 * 1024 * 1024)
    assert status in (b"400", b"431", b""), status  # refused, or the connection closed


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _status_with_header(port: int, size: int) -> bytes:
    """The status of a GET with one header of `size` bytes (b"": closed without an answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /hook HTTP/1.1\r\nHost: parley\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            for start in range(0, size, 65536):
                writer.write(b"a" * min(65536, size - start))
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()
    return line.split(b" ")[1] if line else b""
