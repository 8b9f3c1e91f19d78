"""A client that announces a body and then sends it a byte now and then (slowloris) held a
connection and a task for as long as it liked: a trial's request was still open after 90 s.
The body must now arrive within `http.body_timeout_s`: 408, and the connection is closed.
The real support API on the real HTTP host (uvicorn), PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.support_helpers import ORIGIN, Worker, new_visitor, support_worker

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TIMEOUT_S = 0.5


@pytest.fixture
async def worker(postgres_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix,
        backend=ScriptedBackend(lambda _r: "fine"), http={"body_timeout_s": TIMEOUT_S},
    ) as w:  # fmt: skip
        yield w


async def _raw(worker: Worker, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = worker.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    return reader, writer


async def test_a_body_that_never_arrives_gets_408_and_the_connection_is_closed(
    worker: Worker,
) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        token = (await new_visitor(client, site))["token"]
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Origin: {ORIGIN}\r\nAuthorization: Bearer {token}\r\nContent-Length: 2000\r\n\r\n"
    )
    reader, writer = await _raw(worker, head.encode() + b'{"text": "')
    try:
        async with asyncio.timeout(10 * TIMEOUT_S + 5):
            answer = await reader.read()  # to the end: the server closes the connection
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout", answer[:200]
    assert b'"code":"request_timeout"' in rest.replace(b" ", b"")
    # Nothing was recorded; the worker serves others as before.
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = {"Authorization": f"Bearer {visitor['token']}"}
        posted = await client.post("/v1/messages", headers=auth, json={"text": "hello"})
        assert posted.status_code == 202, posted.text


async def test_a_slow_but_whole_body_and_an_open_event_stream_are_not_cut(
    worker: Worker,
) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        token = visitor["token"]
        body = b'{"text": "hello there"}'
        head = (
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Origin: {ORIGIN}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        reader, writer = await _raw(worker, head.encode() + body[:5])
        await asyncio.sleep(TIMEOUT_S / 10)
        writer.write(body[5:])
        await writer.drain()
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 202 "), answer[:200]
        # An event stream reads nothing more once its (empty) body is in: it stays open.
        async with client.stream("GET", f"/v1/events?token={token}") as stream:
            assert stream.status_code == 200
            await asyncio.sleep(TIMEOUT_S * 3)
            # Still streaming: a message posted now comes through it.
            auth = {"Authorization": f"Bearer {token}"}
            posted = await client.post("/v1/messages", headers=auth, json={"text": "again"})
            assert posted.status_code == 202, posted.text
            answered = f'"reply_to": "{posted.json()["message_id"]}"'
            async with asyncio.timeout(10):
                async for line in stream.aiter_lines():
                    if line.startswith("data:") and answered in line.replace('":"', '": "'):
                        break
