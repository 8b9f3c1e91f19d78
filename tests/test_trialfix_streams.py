"""The caps on open event streams hold for streams opened at the same moment, and every way a
stream ends gives its place back (a trial opened 133 streams for one visitor whose cap is 5,
by opening them at once: the check ran before any of them was counted)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.support.settings import SupportSettings
from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.support_helpers import Worker, new_visitor, support_worker

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CAP = SupportSettings().streams_per_visitor  # the worker runs on the defaults


@pytest.fixture
async def worker(postgres_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda _r: "fine")
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        yield w


async def _open_at_once(
    client: httpx.AsyncClient, url: str, count: int, streams: contextlib.AsyncExitStack
) -> list[int]:
    """The statuses of `count` event streams opened together: every connection made first,
    then every request sent in one go, as a hostile client does (httpx spaces them out); the
    open ones stay open until `streams` closes."""
    address = httpx.URL(str(client.base_url))
    origin = client.headers["origin"]
    request = (f"GET {url} HTTP/1.1\r\nHost: {address.host}\r\nOrigin: {origin}\r\n\r\n").encode()
    pairs = [await asyncio.open_connection(address.host, address.port) for _ in range(count)]
    for _, writer in pairs:
        streams.callback(writer.close)
    for _, writer in pairs:
        writer.write(request)
    await asyncio.gather(*(writer.drain() for _, writer in pairs))
    lines = await asyncio.gather(*(reader.readline() for reader, _ in pairs))
    return [int(line.split()[1]) for line in lines]


async def _places_come_back(client: httpx.AsyncClient, url: str) -> None:
    """The visitor can open CAP streams at once again: the server noticed, on its own time,
    that the earlier ones were closed (waits up to 10 s)."""
    for _ in range(100):
        async with contextlib.AsyncExitStack() as streams:
            if await _open_at_once(client, url, CAP, streams) == [200] * CAP:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the closed streams' places never came back")


async def test_streams_opened_at_once_stay_within_the_visitor_s_cap(worker: Worker) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        url = f"/v1/events?token={visitor['token']}"
        async with contextlib.AsyncExitStack() as streams:
            statuses = await _open_at_once(client, url, 6 * CAP, streams)
            assert sorted(statuses) == [200] * CAP + [429] * (5 * CAP)
        # Every stream closed (read or not): the places are given back, all of them.
        await _places_come_back(client, url)


async def test_a_stream_the_client_leaves_before_reading_gives_its_place_back(
    worker: Worker,
) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        url = f"/v1/events?token={visitor['token']}"
        for _ in range(3 * CAP):  # each one left at once: never more than one open
            async with client.stream("GET", url) as left:
                assert left.status_code == 200
        await _places_come_back(client, url)
