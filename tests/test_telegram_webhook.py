"""Webhook mode: the secret header, the 200 only after the update is in SQL, 503 when the
database cannot take it, and a repeated update answered once."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from adapters.kit.runner import host_for
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.settings import TelegramSettings
from adapters.telegram.webhook import SECRET_HEADER, webhook_route
from bot.app import Parley
from bot.errors import StorageError
from tests.doubles import ScriptedBackend
from tests.telegram_api import FakeBotApi
from tests.telegram_updates import settings_for, telegram_stack, text_update

SECRET = "s3cret-webhook-token"
FAST: dict[str, Any] = {"stream_interval_s": 0.05}


def client_for(adapter: Any) -> httpx.AsyncClient:
    route = webhook_route(adapter.read_webhook_body, adapter.act_on, SECRET, "/tg")
    app = Starlette(routes=[route])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot")


@pytest.mark.parametrize("headers", [{}, {SECRET_HEADER: "wrong"}, {SECRET_HEADER: SECRET + "x"}])
async def test_missing_or_wrong_secret_is_refused_and_nothing_stored(
    tmp_path: Path, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        async with client_for(adapter) as client:
            answer = await client.post("/tg", json=text_update(1, 42, "hi"), headers=headers)
        assert answer.status_code == 403
        assert await app.store.conversations_with_pending() == []
        assert await app.store.history(1, 5) == []
        assert api.sent("sendMessage") == []
    assert SECRET not in caplog.text


async def test_valid_update_is_stored_before_the_200_and_answered(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        async with client_for(adapter) as client:
            answer = await client.post(
                "/tg", json=text_update(1, 42, "hi"), headers={SECRET_HEADER: SECRET}
            )
            assert answer.status_code == 200
            # Checked at once, before any turn could have run to its end:
            assert (await app.store.history(1, 5))[0].content == "hi"
        assert await api.wait_for_messages(42, 1) == ["echo: hi"]


def _with_message(message: object) -> bytes:
    return json.dumps({"update_id": 5, "message": message}).encode()


def _nested(depth: int) -> bytes:
    return b'{"update_id": 6, "message": ' + b"[" * depth + b"]" * depth + b"}"


async def test_malformed_body_is_a_400(tmp_path: Path) -> None:
    good = text_update(3, 42, "fine")["message"]
    bodies = [
        b"{not json",
        b"[1, 2]",
        json.dumps({"no": "update_id"}).encode(),
        _with_message("a message that is a string"),
        _with_message({**good, "text": 12345}),
        _with_message({**good, "date": 10**20}),
        _nested(100_000),
    ]
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, _api):
        client = client_for(adapter)
        for body in bodies:
            answer = await client.post("/tg", content=body, headers={SECRET_HEADER: SECRET})
            assert answer.status_code == 400
        await client.aclose()


async def test_the_same_update_posted_twice_gets_one_reply(tmp_path: Path) -> None:
    payload = text_update(77, 42, "only once please")
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        async with client_for(adapter) as client:
            for _ in range(2):
                answer = await client.post("/tg", json=payload, headers={SECRET_HEADER: SECRET})
                assert answer.status_code == 200
        await adapter.idle()
        assert api.texts(42) == ["echo: only once please"]
        assert [m.content for m in await app.store.history(1, 10)] == [
            "only once please",
            "echo: only once please",
        ]


async def test_database_unreachable_is_a_503_so_telegram_retries(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (app, adapter, api):
        await app.store._engine.dispose()  # type: ignore[attr-defined]
        for name in ["parley.db", "parley.db-wal", "parley.db-shm"]:
            (tmp_path / name).unlink(missing_ok=True)
        (tmp_path / "parley.db").write_bytes(b"this is not a database" * 100)
        async with client_for(adapter) as client:
            answer = await client.post(
                "/tg", json=text_update(1, 42, "hi"), headers={SECRET_HEADER: SECRET}
            )
        assert answer.status_code == 503
        assert api.sent("sendMessage") == []


class RefusingIntake:
    """The adapter's seam to the core, refusing one message the way a database refuses a
    value it cannot store, while the database itself answers."""

    def __init__(self, intake: Any) -> None:
        self._intake = intake

    async def submit(self, incoming: Any) -> Any:
        if "poison" in incoming.text:
            raise StorageError("invalid byte sequence for encoding")
        return await self._intake.submit(incoming)

    async def database_answers(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._intake, name)


async def test_an_update_refused_while_the_database_answers_is_set_aside(tmp_path: Path) -> None:
    api = FakeBotApi()
    async with api.serving() as base_url:
        settings = settings_for(tmp_path, base_url, **FAST)
        async with Parley(settings, backend=ScriptedBackend()) as app:
            host = dataclasses.replace(host_for(app), intake=RefusingIntake(app.intake))
            section = settings.section("telegram")
            assert isinstance(section, TelegramSettings)
            adapter = TelegramAdapter(host, section)
            app.intake.register("telegram", adapter, section.access)
            async with adapter, client_for(adapter) as client:
                headers = {SECRET_HEADER: SECRET}
                poison = text_update(1, 42, "poison")
                codes = [
                    (await client.post("/tg", json=poison, headers=headers)).status_code
                    for _ in range(3)
                ]
                fine = await client.post("/tg", json=text_update(2, 42, "fine"), headers=headers)
                assert codes == [503, 503, 200]  # re-sent twice; the third try is set aside
                assert fine.status_code == 200 and adapter.set_aside == 1
                assert await api.wait_for_messages(42, 1) == ["echo: fine"]


@pytest.mark.redis
async def test_workers_of_one_bot_set_an_update_aside_after_the_same_tries_together(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """The tries an update refused while the database answers gets were counted in each
    worker's memory: Telegram re-sends a webhook update to whichever worker its load balancer
    picks, so with several workers it was tried POISON_AFTER times on each of them (three
    workers: nine tries, each a 503 that holds up the chat's later updates). The workers of
    one bot now count together, in Redis: set aside on the third try, whichever worker
    takes it."""
    api = FakeBotApi()
    core = {"redis": {"url": redis_url, "key_prefix": key_prefix}}
    async with api.serving() as base_url, contextlib.AsyncExitStack() as stack:
        clients, adapters = [], []
        for _ in range(2):  # two workers of one bot, one database, one Redis
            settings = settings_for(tmp_path, base_url, core, **FAST)
            app = await stack.enter_async_context(Parley(settings, backend=ScriptedBackend()))
            host = dataclasses.replace(host_for(app), intake=RefusingIntake(app.intake))
            section = settings.section("telegram")
            assert isinstance(section, TelegramSettings)
            adapter = TelegramAdapter(host, section)
            app.intake.register("telegram", adapter, section.access)
            await stack.enter_async_context(adapter)
            clients.append(await stack.enter_async_context(client_for(adapter)))
            adapters.append(adapter)
        headers = {SECRET_HEADER: SECRET}
        poison = text_update(1, 42, "poison")
        codes = [
            (await clients[n % 2].post("/tg", json=poison, headers=headers)).status_code
            for n in range(3)
        ]
        assert codes == [503, 503, 200]  # a, b, then a again sets it aside
        assert [adapter.set_aside for adapter in adapters] == [1, 0]
