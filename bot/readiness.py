"""`/readyz`: may a load balancer send this worker traffic?

    readiness(app)    the problems now, one short line each (empty: ready): the database
                      answers a query, its schema is at the revision this code needs
                      (not behind it: a downgrade under a running worker), Redis answers
                      PING (when configured), and a model
                      server answers `GET /v1/models` (when the backend is a server;
                      any one of the fallback chain will do, since any of them can answer)
    ReadinessProbe    the same, cached for `ttl_s` and asked once at a time, so a balancer
                      (or several) polling every second costs one round of checks per
                      `ttl_s`, and a slow dependency does not pile up checks

Each check has its own short time limit: a dependency that hangs makes the worker unready,
not its health endpoint slow. The lines name the dependency and the error's type, never a
URL (it may carry a password). During shutdown the HTTP host answers unready before asking
(`HttpHost.draining`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx

from bot.settings import BackendSettings
from bot.storage import migrate
from bot.storage.base import Cache, Store

if TYPE_CHECKING:
    from bot.app import Parley

# Seconds a check may take: well under a balancer's usual 5 s probe timeout.
CHECK_TIMEOUT_S = 2.0
# Seconds an answer is reused: balancers probe every 1-10 s, often from several nodes.
READY_TTL_S = 3.0


async def readiness(app: Parley) -> list[str]:
    """The problems that make `app` unready; empty when it is ready."""
    checks: list[Awaitable[str | None]] = [_database(app.store)]
    if app.settings.redis.url is not None:
        checks.append(_redis(app.cache))
    urls = model_server_urls(app.settings.backend)
    if urls:
        checks.append(_model_servers(urls))
    return [problem for problem in await asyncio.gather(*checks) if problem]


def model_server_urls(settings: BackendSettings) -> list[str]:
    """The `/v1/models` URL of each model server the backend talks to (none in-process)."""
    bases = [settings.base_url] if settings.kind == "openai" else []
    bases += [f.base_url for f in settings.fallbacks if f.kind == "openai"]
    # The server root, like backends.openai_compat: a trailing /v1 is accepted and dropped.
    return [f"{base.rstrip('/').removesuffix('/v1')}/v1/models" for base in bases if base]


async def _database(store: Store) -> str | None:
    # One query says both: the database answers, and at which revision its schema is.
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            found = await store.schema_revision()
    except Exception as exc:
        return f"database: {_why(exc)}"
    problem = await migrate.behind(found)
    return f"database: {problem}" if problem else None


async def _redis(cache: Cache) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await cache.ping()
    except Exception as exc:
        return f"redis: {_why(exc)}"
    return None


async def _model_servers(urls: list[str]) -> str | None:
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S) as client:
        results = await asyncio.gather(*(_model_server(client, url) for url in urls))
    if any(problem is None for problem in results):
        return None
    return f"model server: {results[0]}"


async def _model_server(client: httpx.AsyncClient, url: str) -> str | None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            response = await client.get(url)
    except Exception as exc:
        return _why(exc)
    return None if response.status_code < 500 else f"HTTP {response.status_code}"


def _why(exc: BaseException) -> str:
    """The first cause's type (`ConnectionRefusedError`), not Parley's wrapper around it
    (`StorageError` says nothing an operator can act on); a time limit anywhere on the way
    (asyncio.timeout's TimeoutError comes from a CancelledError) is "no answer in time"."""
    while not isinstance(exc, TimeoutError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__


class ReadinessProbe:
    """`await probe()`: `readiness(app)`, cached for `ttl_s`, one round in flight at once."""

    def __init__(
        self,
        app: Parley,
        *,
        ttl_s: float = READY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        check: Callable[[Parley], Awaitable[list[str]]] = readiness,
    ) -> None:
        self._app = app
        self._ttl_s = ttl_s
        self._clock = clock
        self._check = check
        self._lock = asyncio.Lock()
        self._answer: list[str] = []
        self._at: float | None = None

    async def __call__(self) -> list[str]:
        async with self._lock:  # callers that waited get the answer the first one fetched
            if self._at is None or self._clock() - self._at >= self._ttl_s:
                self._answer = await self._check(self._app)
                self._at = self._clock()
            return list(self._answer)
