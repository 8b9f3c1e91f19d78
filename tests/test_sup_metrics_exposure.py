"""`/metrics` is not served on the adapters' HTTP port where that port may be public: the
support quick start binds every interface, and the metrics name backends, models and
skills. A metrics port of its own takes it off the HTTP server; `metrics.on_http` decides
where no port of its own is set."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from adapters.kit.http import HttpHost
from adapters.kit.runner import http_hosts, run_adapters
from bot.app import Parley
from bot.errors import ConfigError
from bot.settings import load_settings
from tests.doubles import ScriptedBackend
from tests.ports import free_port
from tests.support_helpers import SECRET


async def _get_when_up(
    client: httpx.AsyncClient, url: str, running: asyncio.Task[None]
) -> httpx.Response:
    for _ in range(500):
        if running.done():  # failed: its error is the test's
            running.result()
        try:
            return await client.get(url)
        except httpx.ConnectError:
            await asyncio.sleep(0.02)  # the server is still binding its port
    raise AssertionError(f"{url} never came up")


async def _scrape(
    tmp_path: Path, http_host: str, metrics: dict[str, Any], port: int | None = None
) -> tuple[int, int | None]:
    """The status of /metrics on the support adapter's HTTP port, and on the metrics port of
    its own (None when there is none)."""
    port = port or free_port()
    settings = load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
        http={"host": http_host, "port": port},
        metrics=metrics,
        adapters=["support"],
        support={"token_secret": SECRET},
    )
    stop = asyncio.Event()
    async with Parley(settings, backend=ScriptedBackend()) as app:
        running = asyncio.create_task(run_adapters(app, ["support"], stop=stop))
        try:
            async with httpx.AsyncClient() as client:
                await _get_when_up(client, f"http://127.0.0.1:{port}/healthz", running)
                on_http = (await client.get(f"http://127.0.0.1:{port}/metrics")).status_code
                own = None
                if metrics.get("port"):
                    url = f"http://127.0.0.1:{metrics['port']}/metrics"
                    own = (await _get_when_up(client, url, running)).status_code
        finally:
            stop.set()
            await running
    return on_http, own


@pytest.mark.parametrize(
    ("http_host", "metrics", "expected"),
    [
        # the support quick start: every interface, no metrics port: not there
        ("0.0.0.0", {}, (404, None)),
        # a port of its own: only there
        ("127.0.0.1", {"port": "own"}, (404, 200)),
        # one private port: still there (what deployments without a metrics port scrape)
        ("127.0.0.1", {}, (200, None)),
        # switched off by the operator
        ("127.0.0.1", {"on_http": False}, (404, None)),
        # switched on by the operator (a private network): there too
        ("0.0.0.0", {"on_http": True}, (200, None)),
        ("127.0.0.1", {"port": "own", "on_http": True}, (200, 200)),
    ],
)
async def test_sup_metrics_are_served_on_the_http_port_only_where_private(
    tmp_path: Path, http_host: str, metrics: dict[str, Any], expected: tuple[int, int | None]
) -> None:
    if metrics.get("port") == "own":
        metrics = {**metrics, "port": free_port()}
    assert await _scrape(tmp_path, http_host, metrics) == expected


async def test_sup_metrics_off_the_http_port_that_is_the_metrics_port_is_refused(
    tmp_path: Path,
) -> None:
    """`metrics.port` = `http.port` makes the HTTP server the metrics server: turning
    metrics off on it contradicts that, so it is one configuration line, not a silent 404."""
    port = free_port()
    with pytest.raises(ConfigError, match=r"metrics\.on_http is false but metrics\.port"):
        await _scrape(tmp_path, "127.0.0.1", {"port": port, "on_http": False}, port)


async def test_an_adapter_route_at_metrics_says_how_to_free_the_path(tmp_path: Path) -> None:
    """A webhook an operator put at /metrics (`telegram.webhook_public_url` ending in it)
    takes the path before the metrics endpoint is mounted: the refusal says which setting
    frees it, not only "/metrics is served by /metrics"."""
    settings = load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
        http={"host": "127.0.0.1", "port": free_port()},
    )
    async with Parley(settings, backend=ScriptedBackend()) as app:
        http = HttpHost(settings.http)
        http.mount(Route("/metrics", PlainTextResponse("webhook"), methods=["POST"]))
        with pytest.raises(ConfigError) as refused:
            http_hosts(app, http)
    message = str(refused.value)
    assert message.startswith("http: /metrics is already served here")
    assert "metrics.on_http = false" in message
    assert "\n" not in message
