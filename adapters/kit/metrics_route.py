"""`/metrics` on a port of its own (`[metrics] port`), and on Parley's HTTP host where that is
private or `metrics.on_http` says so (adapters/kit/runner.py decides).

The port of its own is a second `HttpHost`: the same `/healthz`, `/readyz` and 503-while-
stopping behaviour, with only `/metrics` mounted, so nothing else is exposed on it. `/metrics`
is served while stopping too (adapters/kit/http.py, SERVED_WHILE_STOPPING).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.errors import AdapterError
from bot.metrics import Metrics
from bot.settings import HttpSettings

from .http import HttpHost

Ready = Callable[[], Awaitable[list[str]]]


def metrics_route(metrics: Metrics) -> Route:
    async def scrape(request: Request) -> Response:
        await metrics.refresh()
        body, content_type = metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    return Route("/metrics", scrape, methods=["GET"])


def metrics_host(host: str, port: int, metrics: Metrics, ready: Ready | None) -> HttpHost | None:
    """The metrics port's own server; None when `port` is 0 (off)."""
    if port == 0:
        return None
    server = HttpHost(HttpSettings(host=host, port=port), ready=ready, section="metrics")
    server.mount(metrics_route(metrics))
    return server


async def serve_all(hosts: Sequence[HttpHost]) -> None:
    """Serve every host until cancelled; the first one that fails stops the others, and its
    error (one AdapterError line) is raised as itself, not inside an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as group:
            for host in hosts:
                group.create_task(host.serve(), name=f"parley-http-{host.address}")
    except* AdapterError as failed:
        raise failed.exceptions[0] from None
