"""One client address against the others on the support API's event streams (prefix
fairness): the real app and support adapter served by uvicorn, as a hostile client calls them.
Each test failed before its fix."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bot.storage import migrate
from tests.support_helpers import Worker, bearer, new_visitor, support_worker

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

EVENTS_KEPT = 1000
ANSWER_TEXT = "x" * 4000


@pytest.fixture
async def pg(postgres_url: str) -> str:
    await migrate.upgrade(postgres_url)
    return postgres_url


async def _fill_log(worker: Worker, conversation: str) -> None:
    """A visitor's log as full as the defaults keep it: long answers, events_kept of them."""
    for _ in range(0, EVENTS_KEPT, 100):
        await worker.adapter.events.append(conversation, [("delta", {"text": ANSWER_TEXT})] * 100)


async def _replay(client: httpx.AsyncClient, params: dict[str, str], last: str) -> int:
    """Opens the stream, reads the log's replay up to the event `last` (the length of its
    text), closes it."""
    got, at_last = 0, False
    async with client.stream("GET", "/v1/events", params=params) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            at_last = at_last or line == f"id: {last}"
            if line.startswith("data: "):
                got += len(json.loads(line.removeprefix("data: ")).get("text", ""))
                if at_last:
                    break
    return got


async def _answer_head(worker: Worker, client: httpx.AsyncClient, params: dict[str, str]) -> bytes:
    """The first bytes of the answer to one /v1/events, over a connection of its own that is
    closed once they came: a stream, if it is one, never ends."""
    url = httpx.URL(worker.url)
    headers = "".join(f"{k}: {v}\r\n" for k, v in client.headers.items())
    target = httpx.URL("/v1/events", params=params)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {url.host}\r\n{headers}\r\n".encode())
        await writer.drain()
        return await reader.read(4096)
    finally:
        writer.close()


async def test_one_address_reopening_event_streams_is_limited_and_others_are_not(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    """Every /v1/events with Last-Event-ID 0 sends the visitor's whole log again (a thousand
    events, 4 MB here), and opening one was counted against nothing but the caps on streams
    open at once: one address closing and reopening them had a worker replay its logs without
    end (300 opens in a row, all 200, 1.2 GB in 18 s) while every other visitor's answer waited
    for the same event loop. Each open now counts against its address (`ip_requests` opens):
    past it a 429 with Retry-After, before the log is read; another address still opens its
    stream."""
    async with support_worker(
        pg,
        redis_url=redis_url,
        key_prefix=key_prefix,
        ip_requests=3,  # stream opens: three full replays, then a refusal
        rate_window_s=20,
        keepalive_s=0.5,  # a stream left open notices its client gone soon
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as hostile, w.client() as other:
            hostile.headers["X-Forwarded-For"] = "198.51.100.7"
            other.headers["X-Forwarded-For"] = "203.0.113.9"
            visitor = await new_visitor(hostile, site)  # the address's first request
            log = w.adapter.events
            conversation = f"shop:{visitor['visitor_id']}"
            await _fill_log(w, conversation)
            kept = await log.read(conversation, "0-0")
            last = await log.latest(conversation)
            assert last is not None
            params = {"token": visitor["token"], "last_event_id": "0"}
            replayed = [await _replay(hostile, params, last) for _ in range(3)]
            refused = await _answer_head(w, hostile, params)
            assert len(kept) >= EVENTS_KEPT
            assert replayed == [len(kept) * len(ANSWER_TEXT)] * 3
            assert refused.startswith(b"HTTP/1.1 429 ")
            assert b"\r\nretry-after: 20\r\n" in refused.lower()
            assert b'"rate_limited"' in refused
            others = await new_visitor(other, site)
            async with other.stream("GET", "/v1/events", params={"token": others["token"]}) as r:
                assert r.status_code == 200


async def test_reopened_event_streams_leave_the_addresses_messages_their_limit(
    pg: str, redis_url: str, key_prefix: str
) -> None:
    """Visitors behind one address (an office, a carrier's NAT) reopen their streams whenever
    one ends (a worker stopping ends every stream it holds; `streams_per_address` lets 100 be
    open), and those opens were counted with the address's messages: once they reached
    `ip_requests` every visitor there got 429 for their messages until the window ended. The
    opens now have a bucket of their own: past it the next open is refused, and a message from
    that address is still taken."""
    async with support_worker(
        pg,
        redis_url=redis_url,
        key_prefix=key_prefix,
        ip_requests=3,
        rate_window_s=20,
        keepalive_s=0.5,  # a stream left open notices its client gone soon
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as office:
            office.headers["X-Forwarded-For"] = "198.51.100.8"
            visitor = await new_visitor(office, site)  # the address's first request
            params = {"token": visitor["token"]}
            for _ in range(3):
                async with office.stream("GET", "/v1/events", params=params) as response:
                    assert response.status_code == 200
            refused = await _answer_head(w, office, params)
            sent = await office.post(
                "/v1/messages", headers=bearer(visitor["token"]), json={"text": "Hello"}
            )
            assert refused.startswith(b"HTTP/1.1 429 ")
            assert sent.status_code == 202, sent.text
