"""The HTTP backend's connections: small pools side by side instead of one large pool.

httpcore (httpx's transport, 1.0.x) places each request by walking every connection of its
pool, and for each idle one it counts the pool again: a pass costs the square of the pool's
size, and it runs when a request is queued and again when a response is closed. With
HTTP/1.1 an idle connection can also be handed to several queued requests in one pass; all but
one then fail with `ConnectionNotAvailable` and queue again, each time with another pass
(encode/httpcore#1035, #1110; pydantic/httpx2#1075). With 64 conversations streaming at once
through one pool of 64 connections this took a quarter of Parley's CPU: about 5 passes per
request, some 270 connection checks each (`python -m bench.concurrency --profile`).

`ShardedTransport` keeps `shards` pools of at most SHARD_SIZE idle connections each (httpx's
own `AsyncHTTPTransport`, its public API) and sends each request through the pool with the
fewest requests in flight, the first of those on a tie. One conversation at a time therefore
always uses the first pool and its one warm connection; 64 at once spread over 8 pools of 8,
whose passes cost 1/64 of one pool of 64's and which race 8 requests, not 64. The bound on
connections is the same as one pool's: `concurrency` idle ones kept, BURST_FACTOR times that
open at most.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import httpx

# Idle connections kept per pool: a pass over 8 costs about 64 checks.
SHARD_SIZE = 8


class ShardedTransport(httpx.AsyncBaseTransport):
    """Requests over several `httpx.AsyncHTTPTransport` pools, each to the least busy one."""

    def __init__(self, limits: httpx.Limits) -> None:
        keep = limits.max_keepalive_connections or SHARD_SIZE
        count = max(1, math.ceil(keep / SHARD_SIZE))
        most = limits.max_connections
        self._pools = [
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=None if most is None else max(1, math.ceil(most / count)),
                    max_keepalive_connections=math.ceil(keep / count),
                    keepalive_expiry=limits.keepalive_expiry,
                )
            )
            for _ in range(count)
        ]
        self._in_flight = [0] * count  # requests sent through each pool whose body is open

    @property
    def pools(self) -> int:
        return len(self._pools)

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Per pool, the requests sent through it whose response is not closed yet."""
        return tuple(self._in_flight)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        flights = self._in_flight
        index = flights.index(min(flights))
        flights[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            flights[index] -= 1
            raise
        body = response.stream
        assert isinstance(body, httpx.AsyncByteStream)  # an async transport's
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Counted(body, self, index),
            extensions=response.extensions,
        )

    def release(self, index: int) -> None:
        """A response sent through pool `index` was closed."""
        self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


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
