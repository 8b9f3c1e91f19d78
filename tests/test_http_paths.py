"""One HTTP server, many owners: a path that another route already serves, or that lies
under another's mount, would never be reached (a Telegram webhook at /v1/telegram beside the
support API's /v1 answered 404 to every update, and Telegram gave up on it). Such a path is
refused at start with one line naming both."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from adapters.kit.http import HttpHost
from adapters.kit.runner import run_adapters
from bot.app import Parley
from bot.errors import AdapterError, ConfigError
from bot.settings import HttpSettings, load_settings
from tests.doubles import ScriptedBackend
from tests.telegram_api import TOKEN, FakeBotApi


async def _hook(request: Request) -> Response:
    return PlainTextResponse("taken")


def _api() -> Mount:
    return Mount("/v1", app=Starlette(routes=[Route("/messages", _hook, methods=["POST"])]))


@pytest.mark.parametrize(
    ("first", "second", "taken"),
    [
        (_api(), Route("/v1/telegram", _hook, methods=["POST"]), "/v1/"),
        (Route("/v1/telegram", _hook, methods=["POST"]), _api(), "/v1/telegram"),
        (Route("/", _hook, methods=["GET"]), Route("/", _hook, methods=["POST"]), "/"),
        (Route("/hook", _hook, methods=["POST"]), Route("/hook/", _hook), "/hook"),
    ],
)
def test_a_path_served_twice_is_refused(first: Route, second: Route, taken: str) -> None:
    host = HttpHost(HttpSettings())
    host.mount(first)
    with pytest.raises(ConfigError, match=rf"^http: \S+ is already served here \(by {taken}\)"):
        host.mount(second)


def test_a_path_a_route_with_parameters_takes_is_refused() -> None:
    host = HttpHost(HttpSettings())
    host.mount(Route("/{page}", _hook, methods=["GET"]))
    with pytest.raises(
        ConfigError, match=r"^http: /metrics is already served here \(by /\{page\}\)"
    ):
        host.mount(Route("/metrics", _hook, methods=["GET"]))
    host.mount(Route("/chatwoot/webhook/{secret}", _hook, methods=["POST"]))  # not under /{page}


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_the_health_paths_are_taken(path: str) -> None:
    with pytest.raises(ConfigError, match=rf"\(by {path}\)"):
        HttpHost(HttpSettings()).mount(Route(path, _hook, methods=["POST"]))


def test_paths_that_only_share_a_beginning_are_both_served() -> None:
    host = HttpHost(HttpSettings())
    host.mount(_api())
    host.mount(Route("/v10/hook", _hook, methods=["POST"]))
    host.mount(Route("/v1x", _hook, methods=["POST"]))
    host.mount(Route("/", _hook, methods=["GET"]))
    host.mount(Route("/metrics", _hook, methods=["GET"]))  # "/" is a page, not a mount
    assert host.in_use


async def test_a_telegram_webhook_under_the_support_api_stops_start_up(tmp_path: Path) -> None:
    """The real adapters: the support API mounts /v1, then the Telegram adapter's webhook at
    /v1/telegram is refused; `parley run` turns that into one line and exit 3."""
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
            knowledge={"load_sample": False, "semantic": False},
            adapters=["support", "telegram"],
            support={"token_secret": "s" * 32},
            telegram={
                "token": TOKEN,
                "base_url": base_url,
                "mode": "webhook",
                "webhook_public_url": "https://bot.example.com/v1/telegram",
                "webhook_secret_token": "a-long-enough-secret-token",
            },
        )
        async with Parley(settings, backend=ScriptedBackend()) as app:
            with pytest.raises(AdapterError) as refused:
                await asyncio.wait_for(
                    run_adapters(app, ["support", "telegram"], stop=asyncio.Event()), 60
                )
    assert str(refused.value) == (
        "the telegram adapter could not start: http: /v1/telegram is already served here "
        "(by /v1/): give one of them another path (docs/adapters.md, one HTTP server)"
    )
