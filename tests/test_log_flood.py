"""Refused requests cannot flood the log: each webhook and API refusal that anyone on the
internet can cause (a wrong secret, a bad signature, a delivery to the wrong URL, a client
that leaves mid-body) was one log line per request, so thousands of requests a second filled
the operator's disk and buried real warnings. Now the first is logged at once, then at most
one a minute saying how many were left out (bot.logthrottle), with the same answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message

from adapters.chatwoot import webhook as chatwoot_webhook
from adapters.chatwoot.settings import ChatwootSettings
from adapters.kit.http import HttpHost
from adapters.support import api as support_api
from adapters.telegram import webhook as telegram_webhook
from bot.logthrottle import EVERY_S, ThrottledLog
from bot.settings import HttpSettings
from tests.doubles import ScriptedBackend
from tests.ports import free_port
from tests.support_helpers import support_worker
from tests.telegram_updates import telegram_stack, text_update

FLOOD = 1_000
CHATWOOT_SECRET = "a-chatwoot-webhook-secret-0123456789"


class Clock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


# The helper alone.


def test_the_first_line_is_logged_then_one_per_interval_with_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = logging.getLogger("tests.logthrottle")
    throttled = ThrottledLog(log, ["refused"], clock=clock)
    with caplog.at_level(logging.INFO, logger=log.name):
        start = clock.now
        for n in range(1_235):
            throttled.warning("refused", "refused from %s", f"peer-{n}")
            clock.now += 0.04  # all within one interval
        assert _lines(caplog, log.name) == ["refused from peer-0"]
        clock.now = start + EVERY_S
        throttled.warning("refused", "refused from %s", "late")
        clock.now += EVERY_S - 0.5
        throttled.info("refused", "refused from %s", "too soon")
    assert _lines(caplog, log.name) == [
        "refused from peer-0",
        "refused from late (and 1,234 more like it in the last 60 s)",
    ]
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert caplog.records[0].funcName == (
        "test_the_first_line_is_logged_then_one_per_interval_with_the_count_left_out"
    )


def test_each_reason_has_its_own_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of one refusal does not hide the first of another (a wrong secret sent by an
    attacker, then Chatwoot's own deliveries with a clock out of step)."""
    clock = Clock()
    log = logging.getLogger("tests.logthrottle")
    throttled = ThrottledLog(log, ["bad", "stale"], clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for _ in range(50):
            throttled.warning("bad", "bad one")
        throttled.warning("stale", "stale one")
    assert _lines(caplog, log.name) == ["bad one", "stale one"]


def test_memory_is_the_reasons_it_was_built_with_whatever_the_requests_hold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Never keyed by peer or request content: ten thousand peers and paths leave it with
    its two reasons, and a reason it was not built with is refused (a bug), not remembered."""
    clock = Clock()
    log = logging.getLogger("tests.logthrottle")
    throttled = ThrottledLog(log, ["a", "b"], clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        for n in range(10_000):
            throttled.warning("a" if n % 2 else "b", "refused %s from %s", f"/p/{n}", f"10.0.{n}")
            clock.now += 0.5
    assert throttled.reasons == {"a", "b"}
    with pytest.raises(ValueError, match=r"'10\.0\.0\.1' is not one of this log's reasons"):
        throttled.warning("10.0.0.1", "refused")
    assert throttled.reasons == {"a", "b"}
    # 5,000 s of one a and one b each second: the first of each, then one a minute each.
    assert len(_lines(caplog, log.name)) == 2 * (1 + 5_000 // 60)


# Through the endpoints' ASGI apps.


@asynccontextmanager
async def _chatwoot_client(
    refusals: ThrottledLog, **section: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async def act(action: object) -> None:
        raise AssertionError(f"a refused delivery was acted on: {action!r}")

    settings = ChatwootSettings(webhook_secret=CHATWOOT_SECRET, **section)
    host = HttpHost(HttpSettings())
    for route in chatwoot_webhook.webhook_routes(settings, act, refusals=refusals):
        host.mount(route)
    transport = httpx.ASGITransport(app=host.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
        yield client


async def test_a_flood_of_misdirected_chatwoot_deliveries_is_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    refusals = ThrottledLog(chatwoot_webhook.log, chatwoot_webhook.REFUSALS, clock=clock)
    name = chatwoot_webhook.log.name
    with caplog.at_level(logging.WARNING, logger=name):
        async with _chatwoot_client(refusals) as client:
            for n in range(FLOOD):
                answer = await client.post(f"/chatwoot/webhook/guess-{n}", content=b"{}")
                assert (answer.status_code, answer.text) == (404, "not found")
            lines = _lines(caplog, name)
            assert len(lines) == 1, lines  # the first, at once
            assert "no chatwoot.path_secret is set" in lines[0]
            clock.now += EVERY_S
            answer = await client.post("/chatwoot/webhook/one-more", content=b"{}")
            assert answer.status_code == 404
    lines = _lines(caplog, name)
    assert len(lines) == 2, lines
    assert lines[1].endswith(f"(and {FLOOD - 1:,} more like it in the last 60 s)"), lines
    assert not any("guess" in line or "one-more" in line for line in lines)


async def test_a_flood_of_badly_signed_chatwoot_deliveries_is_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """And Chatwoot's own delivery with a clock out of step is still told at once."""
    clock = Clock()
    refusals = ThrottledLog(chatwoot_webhook.log, chatwoot_webhook.REFUSALS, clock=clock)
    name = chatwoot_webhook.log.name
    forged = {
        chatwoot_webhook.TIMESTAMP_HEADER: str(int(time.time())),
        chatwoot_webhook.SIGNATURE_HEADER: "sha256=" + "0" * 64,
    }
    with caplog.at_level(logging.WARNING, logger=name):
        async with _chatwoot_client(refusals) as client:
            for _ in range(FLOOD):
                answer = await client.post("/chatwoot/webhook", content=b"{}", headers=forged)
                assert (answer.status_code, answer.text) == (401, "bad signature")
            assert len(_lines(caplog, name)) == 1
            forged[chatwoot_webhook.TIMESTAMP_HEADER] = "1"
            answer = await client.post("/chatwoot/webhook", content=b"{}", headers=forged)
            assert (answer.status_code, answer.text) == (401, "stale timestamp")
    lines = _lines(caplog, name)
    assert len(lines) == 2, lines
    assert "(bad signature)" in lines[0] and "(stale timestamp)" in lines[1]


async def test_a_flood_of_telegram_updates_without_the_secret_is_one_line_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    refusals = ThrottledLog(telegram_webhook.log, telegram_webhook.REFUSALS, clock=clock)
    name = telegram_webhook.log.name
    wrong = {telegram_webhook.SECRET_HEADER: "guessed"}
    async with telegram_stack(tmp_path, ScriptedBackend()) as (app, adapter, _api):
        route = telegram_webhook.webhook_route(
            adapter.read_webhook_body, adapter.act_on, "s3cret-webhook-token", "/tg",
            refusals=refusals,
        )  # fmt: skip
        host = HttpHost(HttpSettings())
        host.mount(route)
        transport = httpx.ASGITransport(app=host.app())
        with caplog.at_level(logging.WARNING, logger=name):
            async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
                for n in range(FLOOD):
                    answer = await client.post("/tg", json=text_update(n, 42, "hi"), headers=wrong)
                    assert answer.status_code == 403
                assert len(_lines(caplog, name)) == 1
                clock.now += EVERY_S + 5
                answer = await client.post("/tg", json=text_update(0, 42, "hi"), headers=wrong)
                assert answer.status_code == 403
        assert await app.store.conversations_with_pending() == []
    lines = _lines(caplog, name)
    assert len(lines) == 2, lines
    assert "without the right secret" in lines[0]
    assert lines[1].endswith(f"(and {FLOOD - 1:,} more like it in the last 65 s)"), lines


async def _left_mid_body(app: ASGIApp, path: str) -> int:
    """POST `path` as a client that sends part of its body and leaves (which httpx cannot
    do): the status the app answered."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("203.0.113.9", 40000), "server": ("bot", 80),
        "headers": [(b"host", b"bot"), (b"content-type", b"application/json"),
                    (b"content-length", b"100")],
    }  # fmt: skip
    arriving: list[Message] = [
        {"type": "http.request", "body": b'{"text": "he', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return arriving.pop(0) if arriving else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_a_flood_of_support_requests_left_mid_body_is_one_line_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before any key or token is read: the body comes first."""
    clock = Clock()
    name = support_api.log.name
    async with support_worker(f"sqlite+aiosqlite:///{tmp_path}/parley.db", redis_url=None) as w:
        w.adapter.refused.clock = clock
        with caplog.at_level(logging.INFO, logger=name):
            for _ in range(FLOOD):
                assert await _left_mid_body(w.asgi, "/v1/messages") == 400
            assert len(_lines(caplog, name)) == 1
            clock.now += EVERY_S
            assert await _left_mid_body(w.asgi, "/v1/messages") == 400
    lines = _lines(caplog, name)
    assert len(lines) == 2, lines
    assert lines[0] == "support API: POST /v1/messages: the client disconnected"
    assert lines[1] == (
        "support API: POST /v1/messages: the client disconnected "
        f"(and {FLOOD - 1:,} more like it in the last 60 s)"
    )


GARBAGE = (b"GARBAGE / HTTP/1.1\r\n\r\n", b"HTTP/1.1 400", "Invalid HTTP request received.")
UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: bot\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200",
    "Unsupported upgrade request.",
)


async def _send_alone(port: int, request: bytes) -> bytes:
    """`request` on a connection of its own: the start of what uvicorn answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await reader.read(12)
    finally:
        writer.close()


@pytest.mark.parametrize(("request_bytes", "answer", "line"), [GARBAGE, UPGRADE])
async def test_a_flood_of_connections_uvicorn_warns_of_is_one_line_a_minute(
    caplog: pytest.LogCaptureFixture, request_bytes: bytes, answer: bytes, line: str
) -> None:
    """uvicorn's own warnings, one per connection, from anyone: bytes that are no HTTP, an
    upgrade to a protocol it does not serve."""
    port = free_port()
    host = HttpHost(HttpSettings(host="127.0.0.1", port=port))
    clock = Clock()
    host.uvicorn_refusals.clock = clock
    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        serving = asyncio.create_task(host.serve())
        await asyncio.sleep(0)  # it listens once it ran this far: connections queue meanwhile
        try:
            for _ in range(FLOOD):
                assert await _send_alone(port, request_bytes) == answer
            assert len(_lines(caplog, "uvicorn.error")) == 1
            clock.now += EVERY_S
            assert await _send_alone(port, request_bytes) == answer
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    assert _lines(caplog, "uvicorn.error") == [
        line,
        f"{line} (and {FLOOD - 1:,} more like it in the last 60 s)",
    ]
    assert host.uvicorn_refusals not in logging.getLogger("uvicorn.error").filters
