"""Hostile review of the Telegram adapter and the adapter kit: settings that would fail only
later are refused when they load; Parley's own two HTTP servers never fight over a port."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.kit.runner import run_adapters
from bot.app import Parley
from bot.errors import ConfigError
from bot.settings import load_settings
from tests.doubles import ScriptedBackend
from tests.ports import free_port
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_updates import text_update

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hook-secret"
HOOK = {
    "mode": "webhook",
    "webhook_public_url": "https://bot.example.com/telegram",
    "webhook_secret_token": SECRET,
}


def _parley(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    clean |= {
        "PARLEY_HOME": str(tmp_path / "home"),
        "PARLEY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/parley.db",
        "PARLEY_KNOWLEDGE__LOAD_SAMPLE": "false",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path, env=clean, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PARLEY_TELEGRAM__BASE_URL", "api.example.org"),
        ("PARLEY_TELEGRAM__BASE_URL", "http://127.0.0.1:port/bot"),
        ("PARLEY_TELEGRAM__BASE_URL", ""),  # an unset variable in a compose file
        ("PARLEY_TELEGRAM__WEBHOOK_PUBLIC_URL", "example.org/tg"),
        # Telegram's setWebhook takes HTTPS only: http:// failed at the first `parley run`.
        ("PARLEY_TELEGRAM__WEBHOOK_PUBLIC_URL", "http://bot.example.org/tg"),
        # setWebhook takes A-Z a-z 0-9 _ - only (`openssl rand -base64` gives + / =).
        ("PARLEY_TELEGRAM__WEBHOOK_SECRET_TOKEN", "Zm9v+YmFy/cXV4="),
        ("PARLEY_TELEGRAM__WEBHOOK_SECRET_TOKEN", "x" * 257),
    ],
    ids=[
        "base-no-scheme",
        "base-port",
        "base-empty",
        "hook-no-scheme",
        "hook-http",
        "secret-base64",
        "secret-too-long",
    ],
)
@pytest.mark.parametrize("command", ["config", "run"])
def test_rva_a_telegram_setting_that_cannot_work_is_refused_when_settings_load(
    tmp_path: Path, variable: str, value: str, command: str
) -> None:
    """Accepted, such a URL failed only at `parley run` (exit 3: a restart loop), with a
    line about the Bot API or setWebhook instead of the setting."""
    env = {
        "PARLEY_ADAPTERS": "telegram",
        "PARLEY_TELEGRAM__TOKEN": TOKEN,
        "PARLEY_TELEGRAM__MODE": "webhook",
        "PARLEY_TELEGRAM__WEBHOOK_PUBLIC_URL": "https://bot.example.org/tg",
        "PARLEY_TELEGRAM__WEBHOOK_SECRET_TOKEN": SECRET,
        variable: value,
    }
    done = _parley(tmp_path, command, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"parley: error: invalid setting {variable}: "), done.stderr
    assert not value or value not in done.stderr  # a secret is never printed


def test_rva_good_telegram_urls_still_load() -> None:
    settings = load_settings(
        None,
        telegram={
            "token": TOKEN,
            "base_url": "http://127.0.0.1:8081/bot",
            **HOOK,
            "webhook_public_url": "https://bot.example.org:8443/tg",
        },
    )
    section = settings.section("telegram")
    assert section.model_dump()["base_url"] == "http://127.0.0.1:8081/bot"


@pytest.mark.parametrize("metrics_host", ["127.0.0.1", "localhost"])
async def test_rva_metrics_on_the_http_port_are_served_by_the_one_http_server(
    tmp_path: Path, metrics_host: str
) -> None:
    """`[metrics] port` = `[http] port` with a webhook: the HTTP server serves /metrics
    already, so no second server is started on the same port (it ended in exit 3 with
    'cannot listen on ...: Address already in use', a restart loop). `localhost` beside
    127.0.0.1 is the same address (it was taken for another: a helper's walkthrough)."""
    port = free_port()
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
            http={"port": port},
            metrics={"port": port, "host": metrics_host},
            adapters=["telegram"],
            telegram={"token": TOKEN, "base_url": base_url, "stream_interval_s": 0.05, **HOOK},
        )
        stop = asyncio.Event()
        async with Parley(settings, backend=ScriptedBackend()) as app:
            running = asyncio.create_task(run_adapters(app, ["telegram"], stop=stop))
            try:
                async with httpx.AsyncClient() as client:
                    answer = await _post_when_up(client, port, running)
                    assert answer.status_code == 200
                    assert await api.wait_for_messages(42, 1) == ["echo: hooked"]
                    scrape = await client.get(f"http://127.0.0.1:{port}/metrics")
                    assert scrape.status_code == 200 and "parley_turns" in scrape.text
            finally:
                stop.set()
                await running


async def test_rva_polling_with_metrics_on_the_http_port_serves_metrics(tmp_path: Path) -> None:
    """Polling mounts nothing on the HTTP server: the metrics port's own server runs, on the
    port that happens to be http.port (what worked before must keep working)."""
    port = free_port()
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
            http={"port": port},
            metrics={"port": port},
            adapters=["telegram"],
            telegram={"token": TOKEN, "base_url": base_url},
        )
        stop = asyncio.Event()
        async with Parley(settings, backend=ScriptedBackend()) as app:
            running = asyncio.create_task(run_adapters(app, ["telegram"], stop=stop))
            try:
                async with httpx.AsyncClient() as client:
                    scrape = await _get_when_up(client, f"http://127.0.0.1:{port}/metrics", running)
                    assert scrape.status_code == 200 and "parley_turns" in scrape.text
            finally:
                stop.set()
                await running


async def test_rva_metrics_on_the_http_port_of_another_host_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    """Every interface for the webhook, 127.0.0.1 for the metrics, one port: the two cannot
    be one server (the metrics would be public), so it is one configuration line."""
    port = free_port()
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = load_settings(
            None,
            database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
            http={"host": "0.0.0.0", "port": port},
            metrics={"port": port},
            adapters=["telegram"],
            telegram={"token": TOKEN, "base_url": base_url, **HOOK},
        )
        async with Parley(settings, backend=ScriptedBackend()) as app:
            with pytest.raises(ConfigError, match=rf"^metrics.port: {port} is also http.port"):
                await run_adapters(app, ["telegram"], stop=asyncio.Event())


async def _post_when_up(
    client: httpx.AsyncClient, port: int, running: asyncio.Task[Any]
) -> httpx.Response:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    url = f"http://127.0.0.1:{port}/telegram"
    for _ in range(500):
        if running.done():  # failed: its error is the test's
            running.result()
        try:
            return await client.post(url, json=text_update(9, 42, "hooked"), headers=headers)
        except httpx.ConnectError:
            await asyncio.sleep(0.02)  # the server is still binding its port
    raise AssertionError("webhook server never came up")


async def _get_when_up(
    client: httpx.AsyncClient, url: str, running: asyncio.Task[Any]
) -> httpx.Response:
    for _ in range(500):
        if running.done():
            running.result()
        try:
            return await client.get(url)
        except httpx.ConnectError:
            await asyncio.sleep(0.02)  # the server is still binding its port
    raise AssertionError("metrics server never came up")
