"""Chatwoot out of reach for a few seconds: nothing is lost. A trial stopped Chatwoot and
asked for a person: the handoff request was dropped after five tries (the conversation stayed
"pending" in Chatwoot with no note, so no agent ever saw it, until a worker restarted), and the
customer's notice and the bot's answers in other conversations were recorded but never shown.

Chatwoot here is the fake (tests/fake_chatwoot.py) behind a TCP proxy that stops listening:
Parley's calls fail to connect, as they do when Chatwoot is down; its webhooks still reach
Parley. PostgreSQL is real."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from backends.base import GenerationRequest
from bot import phrases
from bot.handoff.types import EventKind
from bot.storage import migrate
from bot.types import Role
from tests.crash_cluster import TcpProxy
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import chatwoot_worker
from tests.test_handoff import RecordingBridge

pytestmark = pytest.mark.postgres

OUTAGE_S = 6.0  # three sweeps and looks at Chatwoot (LOOK_S = 2 s)


def _echo(request: GenerationRequest) -> str:
    return "echo: " + [m.content for m in request.messages if m.role is Role.USER][-1]


async def _until(done: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if done():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s}s: {what}")


async def test_a_chatwoot_outage_delays_answers_and_the_handoff_but_loses_nothing(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(_echo)
    proxy = TcpProxy("127.0.0.1", 9)  # aimed at the fake once it listens
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}"

    def aim(port: int) -> None:
        proxy.target = ("127.0.0.1", port)

    try:
        async with chatwoot_worker(postgres_url, backend, url=url, retries=1, listening=aim) as w:
            fake = w.fake
            desk = RecordingBridge()  # what the desk hands on, beside the Chatwoot bridge
            w.app.desk.attach(desk)
            asking, chatting = fake.conversation(70), fake.conversation(71)
            assert await fake.contact_says(chatting, "first question") == 200
            await w.idle()
            assert fake.public_replies(chatting) == ["echo: first question"]

            await proxy.aclose()  # Chatwoot is down
            calls = len(fake.calls)
            caplog.set_level(logging.INFO)
            assert await fake.contact_says(asking, "I want to talk to a human") == 200
            assert await fake.contact_says(chatting, "second question") == 200
            await asyncio.sleep(OUTAGE_S / 2)
            # Written while the sentence still waits: it reaches the agent, and is not
            # answered with the sentence a second time.
            assert await fake.contact_says(asking, "Hallo? Ist da jemand? Bitte antworten") == 200
            await asyncio.sleep(OUTAGE_S / 2)
            asked = sum(_echo(r) == "echo: second question" for r in backend.requests)
            assert asked == 1  # its first try; then no model call while Chatwoot is away
            assert len(fake.calls) == calls

            await proxy.start(proxy.port)  # back
            await _until(lambda: asking.status == "open", "the handoff reached Chatwoot")
            await _until(
                lambda: fake.public_replies(chatting)[-1:] == ["echo: second question"],
                "the waiting answer was shown",
            )
            # The asking conversation's turn (the owed sentence, then Hallo for the agent)
            # runs at the adapter's next look at Chatwoot, which may come after idle().
            await _until(
                lambda: any(e.kind is EventKind.CUSTOMER_MESSAGE for e in desk.events),
                "the message written during the outage reached the agent",
            )
            await w.idle()
            assert fake.public_replies(chatting) == [
                "echo: first question",
                "echo: second question",
            ]
            assert sum(_echo(r) == "echo: second question" for r in backend.requests) == 2
            (note,) = fake.private_notes(asking)
            assert note.startswith("Handoff: asked")
            forwarded = [e.text for e in desk.events if e.kind is EventKind.CUSTOMER_MESSAGE]
            assert forwarded == ["Hallo? Ist da jemand? Bitte antworten"]
            assert [c.body for c in fake.api_calls("/toggle_status")] == [{"status": "open"}]
            assert fake.public_replies(asking) == [phrases.HANDING_OFF]
    finally:
        await proxy.aclose()
    said = [r.getMessage() for r in caplog.records if r.name.startswith(("adapters", "bot"))]
    assert sum("Chatwoot is unreachable" in line for line in said) == 1, said
    assert sum("the help desk is out of reach" in line for line in said) == 1, said
    assert not any("dropped after" in line for line in said), said


async def test_an_unanswered_ask_that_hands_off_while_chatwoot_is_down_says_both_once(
    postgres_url: str,
) -> None:
    """A command whose "I don't know" handed off: run again once Chatwoot is back, it says
    its answer and the handoff sentence, once (a re-run took the command path and said only
    "I don't know", and the customer never heard a person was coming)."""
    await migrate.upgrade(postgres_url)
    proxy = TcpProxy("127.0.0.1", 9)
    await proxy.start()
    url = f"http://127.0.0.1:{proxy.port}"
    handoff = {"unanswered_in_a_row": 1}

    def aim(port: int) -> None:
        proxy.target = ("127.0.0.1", port)

    try:
        async with chatwoot_worker(
            postgres_url, None, url=url, retries=1, handoff=handoff, listening=aim
        ) as w:
            fake = w.fake
            conv = fake.conversation(72)
            await proxy.aclose()  # Chatwoot is down
            assert await fake.contact_says(conv, "/ask what is the warranty period?") == 200
            await asyncio.sleep(OUTAGE_S / 2)
            await proxy.start(proxy.port)  # back
            await _until(lambda: bool(fake.public_replies(conv)), "the answer was shown")
            await w.idle()
            (shown,) = fake.public_replies(conv)
            assert shown.startswith("I don't know") and shown.endswith(phrases.HANDING_OFF)
            assert conv.status == "open"
            assert len(fake.private_notes(conv)) == 1
    finally:
        await proxy.aclose()


async def test_a_chatwoot_behind_a_proxy_answering_502_keeps_the_handoff(
    postgres_url: str,
) -> None:
    """A Chatwoot behind nginx answers 502 while it is down: the handoff request was dropped
    after five tries (about 40 s). The desk now keeps it until Chatwoot answers: the agents'
    status change and note arrive, once (answers to the customer are another matter: after a
    502 one may have been created, so it is never posted again)."""
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, ScriptedBackend(_echo), retries=1) as w:
        fake = w.fake
        conv = fake.conversation(73)
        for _ in range(12):  # more than the five tries of two calls each the desk made
            fake.fail_next(502, retry_after="")
        assert await fake.contact_says(conv, "I want to talk to a human") == 200
        await _until(lambda: conv.status == "open", "the handoff reached Chatwoot", 60)
        await w.idle()
        (note,) = fake.private_notes(conv)
        assert note.startswith("Handoff: asked")
