"""A request line whose target is an absolute URL (`GET http://host:port/v1/history
HTTP/1.1`), which RFC 9112 section 3.2.2 says a server MUST accept and which some proxies and
clients send, got Starlette's plain-text 404: uvicorn's h11 protocol hands the target on as
the path. The HTTP host now routes it as its path and query, with its authority as the Host
(the Host header, which a server must then ignore, is replaced); a target that is absolute
with another scheme than http or https, or malformed, gets the API's JSON 400. The real HTTP
host (uvicorn, as a worker serves it) over a raw socket: HTTP clients send the origin form."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.kit.http import HttpHost
from bot.settings import HttpSettings
from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.local_server import host_serving
from tests.ports import free_port
from tests.support_helpers import new_visitor, support_worker

WITHIN_S = 30


async def _echo(request: Request) -> Response:
    scope = request.scope
    return JSONResponse(
        {
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "host": request.headers.getlist("host"),
        }
    )


@pytest.fixture
async def port() -> AsyncIterator[int]:
    port = free_port()
    host = HttpHost(HttpSettings(port=port))
    host.mount(Route("/", _echo, methods=["GET"]))
    host.mount(Route("/echo", _echo, methods=["GET"]))
    async with host_serving(host, port):
        yield port


async def _ask(port: int, head: str) -> tuple[int, bytes]:
    """The status and body of one request (`head`: its line and headers, without the blank
    line that ends them), on a connection of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{head}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(WITHIN_S):
            answer = await reader.read()  # to the end: the server closes the connection
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split(b" ")[1]), body


async def _json(port: int, head: str) -> tuple[int, Any]:
    status, body = await _ask(port, head)
    return status, json.loads(body)


async def test_an_absolute_target_is_routed_as_its_path_and_query(port: int) -> None:
    here = f"127.0.0.1:{port}"
    status, seen = await _json(port, f"GET http://{here}/echo?x=1&y=%20 HTTP/1.1\r\nHost: {here}")
    assert status == 200, seen
    assert seen == {"path": "/echo", "raw_path": "/echo", "query": "x=1&y=%20", "host": [here]}
    # The empty path is "/"; the scheme and the host are read whatever their case.
    status, seen = await _json(port, f"GET HTTPS://{here}?q=1 HTTP/1.1\r\nHost: {here}")
    assert status == 200, seen
    assert (seen["path"], seen["raw_path"], seen["query"]) == ("/", "/", "q=1")
    status, body = await _ask(port, f"GET http://{here}/healthz HTTP/1.1\r\nHost: {here}")
    assert (status, body) == (200, b"ok")


async def test_the_targets_authority_is_the_host_whatever_the_host_header_says(
    port: int,
) -> None:
    head = "GET http://Example.org:8443/ec%68o HTTP/1.1\r\nHost: elsewhere.example"
    status, seen = await _json(port, head)
    assert status == 200, seen
    assert (seen["path"], seen["raw_path"], seen["query"]) == ("/echo", "/ec%68o", "")
    assert seen["host"] == ["Example.org:8443"]
    # HTTP/1.0 may send no Host at all: the target's authority is it.
    status, seen = await _json(port, "GET http://[::1]/echo HTTP/1.0")
    assert (status, seen["host"]) == (200, ["[::1]"]), seen


@pytest.mark.parametrize(
    "target",
    [
        "ftp://parley/echo",  # another scheme
        "urn:parley:echo",
        "http:/echo",  # no authority
        "http:///echo",  # an empty host, which RFC 9110 4.2.1 says to reject
        "http://user@parley/echo",  # userinfo: RFC 9110 4.2.4, to be treated as an error
        "http://parley:80x/echo",
        "http://[::1/echo",
        'http://par"ley/echo',
        "http://parley:80:81/echo",
        "echo",  # neither a path nor a URL
        "http://parley/echo#top",  # a fragment is never part of a request target
    ],
)
async def test_a_target_of_another_scheme_or_malformed_gets_the_apis_400(
    port: int, target: str
) -> None:
    status, body = await _ask(port, f"GET {target} HTTP/1.1\r\nHost: parley")
    assert status == 400, body
    answer = json.loads(body)
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["message"].startswith("the request target")


@pytest.mark.postgres
@pytest.mark.redis
async def test_the_support_api_answers_an_absolute_target(
    postgres_url: str, redis_url: str, key_prefix: str
) -> None:
    await migrate.upgrade(postgres_url)
    port = free_port()
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix,
        backend=ScriptedBackend(lambda _r: "fine"), http={"port": port},
    ) as worker:  # fmt: skip
        site = await worker.add_site("shop")
        async with worker.client() as client:
            visitor = await new_visitor(client, site)
        async with host_serving(worker.http, port):
            here = f"127.0.0.1:{port}"
            head = (
                f"GET http://{here}/v1/history?limit=5 HTTP/1.1\r\nHost: {here}\r\n"
                f"Authorization: Bearer {visitor['token']}"
            )
            status, page = await _json(port, head)
    assert status == 200, page
    assert page["messages"] == []
