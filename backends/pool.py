"""The HTTP backend's connections: small pools side by side instead of one large pool.

httpcore (httpx's transport, 1.0.x) places each request by walking every connection of its
pool, and for each idle one it counts the pool again: a pass costs the square of the pool's
size, and it runs when a request is queued and again when a response is closed. With
HTTP/1.1 an idle connection can also be handed to several queued requests in one pass; all but
one then fail with `ConnectionNotAvailable` and queue again, each time with another pass
(encode/httpcore#1035, #1110; pydantic/httpx2#1075). With 64 conversations streaming at once
through one pool of 64 connections this took a quarter of Parley's CPU: about 5 passes per
request, some 270 connection checks each (`python -m bench.concurrency --profile`).

`ShardedTransport` keeps pools of at most SHARD_SIZE idle connections each (httpx's own
`AsyncHTTPTransport`, its public API, all sharing one TLS context) and sends each request
through the pool with the fewest requests in flight, the first of those on a tie. One
conversation at a time therefore always uses the first pool and its one warm connection; 64 at
once spread over 8 pools of 8, whose passes cost 1/64 of one pool of 64's and which race 8
requests, not 64.

The bounds are one pool's: `max_keepalive_connections` idle connections kept in all (split
over the pools), and at most `max_connections` requests in flight in all, counted here, so that
a request waits for any pool's connection, not its own pool's, and gives up after the request's
pool timeout with `httpx.PoolTimeout`, as one pool does.

Left as it is: httpcore closes a pool's expired idle connections only when that pool is used,
so after a burst and then one conversation at a time, the other pools' idle connections (at
most `max_keepalive_connections` in all) stay open until the next burst reaches them, where one
pool would have closed them at its next request. And a request goes to the least busy pool
even if that pool has no idle connection left (its connections were dropped, say by a reply
closed unread) while another has one: a new connection where one pool would have reused one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import httpx

# Idle connections kept per pool: a pass over 8 costs about 64 checks.
SHARD_SIZE = 8


class ShardedTransport(httpx.AsyncBaseTransport):
    """Requests over several `httpx.AsyncHTTPTransport` pools, each to the least busy one."""

    def __init__(self, limits: httpx.Limits) -> None:
        most = limits.max_connections
        keep = limits.max_keepalive_connections
        if keep is None:
            keep = most if most is not None else SHARD_SIZE
        count = max(1, math.ceil(keep / SHARD_SIZE))
        tls = httpx.create_ssl_context()  # once: each transport would load the CA bundle again
        self._pools = [
            httpx.AsyncHTTPTransport(
                verify=tls,
                limits=httpx.Limits(
                    max_connections=most,  # the bound is kept by `_slots`, over all pools
                    max_keepalive_connections=keep // count + (index < keep % count),
                    keepalive_expiry=limits.keepalive_expiry,
                ),
            )
            for index in range(count)
        ]
        self._slots = asyncio.Semaphore(most) if most is not None else None
        self._in_flight = [0] * count  # requests sent through each pool whose body is open

    @property
    def pools(self) -> int:
        return len(self._pools)

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Per pool, the requests sent through it whose response is not closed yet."""
        return tuple(self._in_flight)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._take_slot(request)
        flights = self._in_flight
        index = flights.index(min(flights))
        flights[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
            body = response.stream
            assert isinstance(body, httpx.AsyncByteStream)  # an async transport's
        except BaseException:
            self.release(index)
            raise
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Counted(body, self, index),
            extensions=response.extensions,
        )

    async def _take_slot(self, request: httpx.Request) -> None:
        slots = self._slots
        if slots is None:
            return
        if not slots.locked():
            await slots.acquire()  # free: returns at once
            return
        wait = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(wait):
                await slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("every connection is in use", request=request) from None

    def release(self, index: int) -> None:
        """A request sent through pool `index` ended: its response was closed, or it failed."""
        self._in_flight[index] -= 1
        if self._slots is not None:
            self._slots.release()

    async def aclose(self) -> None:
        async with contextlib.AsyncExitStack() as closing:  # every pool, whatever one raises
            for pool in self._pools:
                closing.push_async_callback(pool.aclose)


class _Counted(httpx.AsyncByteStream):
    """A response body that tells its transport when it is closed (once)."""

    def __init__(self, inner: httpx.AsyncByteStream, owner: ShardedTransport, index: int):
        self._inner = inner
        self._owner: ShardedTransport | None = owner
        self._index = index

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            yield part

    async def aclose(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.release(self._index)
        await self._inner.aclose()
