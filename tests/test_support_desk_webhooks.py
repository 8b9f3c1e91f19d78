"""Signed outbound webhooks (adapters/support/webhooks.py) against a real HTTP receiver served
by uvicorn, which verifies each delivery with the snippet docs/support.md gives receivers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.support.settings import SupportSettings
from adapters.support.webhooks import WebhookBridge, WebhookTarget, event_id, sign
from bot.handoff.types import DeskEvent, EventKind, HandoffNote, HandoffState, Reason
from bot.logsafety import LogSafetyFilter, redactor, secrets_in, users_in
from bot.types import ConversationKey, utcnow
from tests.local_server import serving
from tests.test_logsafety import captured_debug_log

DOCS = Path(__file__).resolve().parent.parent / "docs" / "support.md"
SECRET = "whsec-test-0123456789abcdef"
OTHER_SECRET = "whsec-other-0123456789abcdef"


def docs_verifier() -> Callable[..., bool]:
    """`verify_parley_signature` as docs/support.md prints it, run as a receiver would."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- webhook-verify.*?-->\s*```python\n(.*?)```", text, re.S)
    assert block is not None, "docs/support.md lost its verification snippet"
    scope: dict[str, Any] = {}
    exec(compile(block.group(1), str(DOCS), "exec"), scope)
    verify: Callable[..., bool] = scope["verify_parley_signature"]
    return verify


@dataclass
class Receiver:
    """A help desk's endpoint: answers with `statuses` in turn (then 200), keeps each request."""

    statuses: list[int] = field(default_factory=list)
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        async with self.arrived:
            self.seen.append((dict(request.headers), body))
            self.arrived.notify_all()
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    async def delivered(self, kind: str, count: int = 1) -> list[tuple[dict[str, str], Any]]:
        """Wait until `count` deliveries of this event type came; each (headers, payload)."""

        def found() -> list[tuple[dict[str, str], Any]]:
            loaded = [(h, json.loads(b)) for h, b in self.seen]
            return [(h, p) for h, p in loaded if p["type"] == kind]

        async with asyncio.timeout(30), self.arrived:
            await self.arrived.wait_for(lambda: len(found()) >= count)
        return found()


@asynccontextmanager
async def receiver(*statuses: int) -> AsyncIterator[Receiver]:
    r = Receiver(list(statuses))
    app = Starlette(routes=[Route("/hooks/{token}", r.handle, methods=["POST"])])
    async with serving(app) as port:
        r.url = f"http://127.0.0.1:{port}/hooks/path-token-abc"
        yield r


def event(kind: EventKind = EventKind.REQUESTED, key: ConversationKey | None = None) -> DeskEvent:
    note = HandoffNote(
        Reason.ASKED,
        "",
        "Wants a refund for order 1234.",
        "de",
        ["neutral", "negative"],
        ["Where is my refund?"],
        ["Returns policy"],
    )
    return DeskEvent(
        kind,
        key or ConversationKey("support", "shop:v_abc123"),
        7,
        HandoffState.WAITING,
        utcnow(),
        reason=Reason.ASKED,
        note=note,
    )


def bridge(url: str, **kw: Any) -> WebhookBridge:
    target = WebhookTarget(url=url, secret=SECRET)  # type: ignore[arg-type]
    return WebhookBridge({"shop": target}, None, backoff_max_s=0.05, **kw)


async def test_a_delivery_is_signed_and_the_documented_snippet_verifies_it() -> None:
    verify = docs_verifier()
    async with receiver() as r:
        hooks = bridge(r.url)
        sent = event()
        await hooks.publish(sent)
        await hooks.idle()
        await hooks.aclose()
    ((headers, body),) = r.seen
    stamp, signature = headers["parley-timestamp"], headers["parley-signature"]
    assert signature.startswith("v1=") and abs(int(stamp) - time.time()) < 60
    assert verify(SECRET, body, stamp, signature)
    assert not verify(OTHER_SECRET, body, stamp, signature)
    assert not verify(SECRET, body.replace(b"refund", b"refunt"), stamp, signature)
    assert not verify(SECRET, body, str(int(stamp) - 3600), signature)  # a replay an hour on
    # Forged headers are no match, never an exception: digits of another script (int()
    # refused "²" that str.isdigit() took), a signature that is not ASCII (compare_digest
    # refuses such a str).
    assert not verify(SECRET, body, "\u00b2", signature)
    assert not verify(SECRET, body, stamp, "v1=\u00e9")
    assert verify(SECRET, body, stamp, f"v1=\u00e9, {signature}")  # the next one still counts
    payload = json.loads(body)
    assert headers["parley-event-id"] == payload["id"] == event_id(sent)
    assert headers["content-type"] == "application/json"
    assert payload["type"] == "handoff.requested" and payload["state"] == "waiting"
    assert payload["conversation"] == {
        "id": 7,
        "platform": "support",
        "chat_id": "shop:v_abc123",
        "thread_id": "",
        "site": "shop",
        "visitor_id": "v_abc123",
    }
    assert payload["note"]["unanswered"] == ["Where is my refund?"]
    assert "Not answered by the bot:" in payload["note"]["text"]


def test_the_desk_guide_prints_the_same_verification_snippet() -> None:
    """docs/support-desk.md prints the snippet again: a fix to one must reach the other."""
    desk = (DOCS.parent / "support-desk.md").read_text(encoding="utf-8")
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- webhook-verify.*?-->\s*```python\n(.*?)```", text, re.S)
    assert block is not None and f"```python\n{block.group(1)}```" in desk


async def test_a_500_is_retried_with_the_same_event_id_and_a_fresh_signature() -> None:
    verify = docs_verifier()
    stamps = iter([1_000, 2_000, time.time()])
    async with receiver(500, 503) as r:
        hooks = bridge(r.url, clock=lambda: next(stamps))
        await hooks.publish(event())
        await hooks.idle()
        await hooks.aclose()
    assert len(r.seen) == 3
    assert len({h["parley-event-id"] for h, _ in r.seen}) == 1
    assert [h["parley-timestamp"] for h, _ in r.seen][:2] == ["1000", "2000"]
    headers, body = r.seen[-1]
    assert headers["parley-signature"] == sign(SECRET, int(headers["parley-timestamp"]), body)
    assert verify(SECRET, body, headers["parley-timestamp"], headers["parley-signature"])
    assert [(d.status, d.attempts) for d in hooks.deliveries] == [(200, 3)]


async def test_retries_are_bounded_and_a_4xx_is_not_retried() -> None:
    async with receiver(500, 500, 500, 500, 422) as r:
        hooks = bridge(r.url, attempts=3)
        await hooks.publish(event())  # never raises: the desk would only try again
        await hooks.idle()
        assert len(r.seen) == 3
        await hooks.publish(event(EventKind.TAKEN))  # the 4th answer: 500, then a 422
        await hooks.idle()
        await hooks.aclose()
    assert len(r.seen) == 5
    assert [(d.status, d.attempts) for d in hooks.deliveries] == [(500, 3), (422, 2)]


async def test_a_receiver_that_is_down_is_retried_then_given_up() -> None:
    async with receiver() as r:
        url = r.url
    hooks = bridge(url, attempts=2)  # the server is gone: connection refused
    await hooks.publish(event())
    await hooks.idle()
    await hooks.aclose()
    assert [(d.status, d.attempts) for d in hooks.deliveries] == [(0, 2)]


async def test_each_event_goes_to_its_sites_target_or_the_default() -> None:
    async with receiver() as shop, receiver() as default:
        hooks = WebhookBridge(
            {"shop": WebhookTarget(url=shop.url, secret=SECRET)},  # type: ignore[arg-type]
            WebhookTarget(url=default.url, secret=OTHER_SECRET),  # type: ignore[arg-type]
        )
        await hooks.publish(event())
        await hooks.publish(event(key=ConversationKey("support", "blog:v_x1")))
        await hooks.publish(event(key=ConversationKey("telegram", "12345")))
        await hooks.idle()
        await hooks.aclose()
    assert len(shop.seen) == 1 and len(default.seen) == 2
    sites = [json.loads(body)["conversation"] for _, body in default.seen]
    assert sites[0]["site"] == "blog" and sites[1]["platform"] == "telegram"
    assert "site" not in sites[1]
    without = WebhookBridge({}, None)
    assert not without.enabled and without.target_for(event()) is None
    await without.aclose()


async def test_neither_the_secret_nor_the_url_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, behind the filter Parley installs on its log handlers (bot/logsafety.py:
    httpx's own request lines, which name the URL, are dropped there)."""
    caplog.set_level(logging.DEBUG)
    # pytest keeps one caplog handler for the session: a filter left on it redacted the
    # tracebacks of later tests (test_a_refused_argument_logs_its_value_with_log_message_text).
    safety = LogSafetyFilter()
    caplog.handler.addFilter(safety)
    try:
        async with receiver(500, 500, 404) as r:
            hooks = bridge(r.url, attempts=2)
            await hooks.publish(event())
            await hooks.publish(event(EventKind.TAKEN))
            await hooks.idle()
            await hooks.aclose()
    finally:
        caplog.handler.removeFilter(safety)
    assert "webhook shop" in caplog.text  # the failures were logged ...
    for secret in (SECRET, "path-token-abc", r.url, "refund"):
        assert secret not in caplog.text  # ... without the secret, the URL or the text


async def test_a_webhook_urls_query_and_user_are_redacted_with_log_message_text() -> None:
    """With log_message_text on, httpx's request lines are kept, and they name the URL: its
    query string and user are the receiver's secrets whatever their names (Azure Functions'
    `?code=`), redacted by the filter `parley` installs from the settings (`secrets_in`)."""
    async with receiver() as r:
        url = (
            r.url.replace("://", "://desk-agent:pw@")
            + "?code=desk-code-4f1e&site=shop&ref=0123456789abcdef0"
        )
        settings = SupportSettings(webhook={"url": url, "secret": SECRET})  # type: ignore[arg-type]
        secrets, users = secrets_in(settings), users_in(settings)
        with captured_debug_log(safe=True, log_message_text=True, secrets=secrets, users=users) as (
            log,
            _,
        ):
            hooks = bridge(url)
            await hooks.publish(event())
            await hooks.idle()
            await hooks.aclose()
        assert len(r.seen) == 1
    # A value as long as a token is one wherever it shows; a short one may be a word.
    assert "0123456789abcdef0" in secrets and "shop" not in secrets
    text = log.getvalue()
    assert "HTTP Request: POST" in text  # httpx's line was kept ...
    # ... without the path (the receiver's token: Zapier's, Slack's, this one's), the query
    # string or the user.
    secrets = ("path-token-abc", "desk-code-4f1e", "site=shop", "0123456789abcdef0", "desk-agent")
    for secret in (*secrets, SECRET):
        assert secret not in text


@pytest.mark.parametrize("user", ["support", "admin"])
def test_a_webhook_urls_user_is_redacted_in_the_url_only(user: str) -> None:
    """A receiver's user name is hidden where it stands in a URL, whatever its length; the
    same word elsewhere in a line is an ordinary word ("support" redacted from every line
    took "the support desk" with it, while "admin", short, was shown in httpx's line)."""
    url = f"https://{user}:pw@desk.example/hook"
    settings = SupportSettings(webhook={"url": url, "secret": SECRET})  # type: ignore[arg-type]
    safety = redactor(settings)
    line = f'HTTP Request: POST {url} "HTTP/1.1 200 OK"; the {user} desk answered'
    assert safety.redact(line) == (
        'HTTP Request: POST https://***:***@desk.example/hook "HTTP/1.1 200 OK"; '
        f"the {user} desk answered"
    )
    assert safety.redact(f"https://{user}@desk.example/") == "https://***@desk.example/"


@asynccontextmanager
async def blackhole() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A receiver that accepts each request and never answers (a hung help desk); the event
    is set once the first request arrived."""
    reached = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        reached.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hooks", reached
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_receiver_that_never_answers_delays_only_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """H7 H1: a dead site's receiver held every other receiver's events for minutes."""
    caplog.set_level(logging.WARNING)
    slow_site = ConversationKey("support", "other:v_1")
    async with blackhole() as (dead_url, reached), receiver() as healthy:
        hooks = WebhookBridge(
            {"other": WebhookTarget(url=dead_url, secret=SECRET)},  # type: ignore[arg-type]
            WebhookTarget(url=healthy.url, secret=OTHER_SECRET),  # type: ignore[arg-type]
            timeout_s=120, queue_max=2,
        )  # fmt: skip
        async with asyncio.timeout(2):  # publish only queues: it never waits for a receiver
            await hooks.publish(event(key=slow_site))
            await hooks.publish(event(key=slow_site))
            await hooks.publish(event())  # site shop: the default receiver
            (headers, payload), *_ = await healthy.delivered("handoff.requested")
            await reached.wait()  # the dead one holds its first event, unanswered
        assert payload["conversation"]["site"] == "shop"
        assert headers["parley-event-id"] == payload["id"]
        for _ in range(3):  # its queue (2) is full: the oldest waiting ones go, with a warning
            await hooks.publish(event(EventKind.TAKEN, key=slow_site))
        await hooks.aclose()
    assert caplog.text.count("webhook other: 2 events waiting, the oldest") == 1  # 1 in 100
    assert "the oldest (handoff.requested) dropped; 1 so far" in caplog.text
    assert "webhook other: 3 events not delivered: stopping" in caplog.text
    assert len(healthy.seen) == 1
