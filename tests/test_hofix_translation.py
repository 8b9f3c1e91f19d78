"""Short agent and customer messages are not "translated" into the language they are in: where
the customer's language is the agent's, nothing is translated; where they differ and the
detector cannot tell a short text's language, the writer's known language is its source. The
real app and desk over PostgreSQL and Redis, served by uvicorn; the model is a scripted
translator at the backend seam, and the help desk a webhook receiver over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from httpx_sse import ServerSentEvent

from bot.storage import migrate
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    TRANSLATE,
    EventReader,
    Worker,
    bearer,
    data,
    last_user_text,
    new_visitor,
    open_stream,
    support_worker,
    translating,
)
from tests.test_support_desk_webhooks import SECRET, Receiver, receiver

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SHORT = ["OK, done.", "Sure!"]  # too short for the detector to be sure of
LONG = "Your order left our warehouse today."
TRANSLATIONS = {
    ("German", "OK, done."): "OK, erledigt.",
    ("German", "Sure!"): "Klar!",
    ("English", "Danke!"): "Thanks!",
}


def translations_asked(backend: ScriptedBackend) -> list[str]:
    return [last_user_text(r) for r in backend.requests
            if TRANSLATE.search(r.messages[0].content)]  # fmt: skip


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(translating(TRANSLATIONS))


@pytest.fixture
async def worker(
    postgres_url: str, redis_url: str, key_prefix: str, hooks: Receiver, backend: ScriptedBackend
) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend,
        webhook={"url": hooks.url, "secret": SECRET}, webhook_backoff_max_s=0.1,
    ) as w:  # fmt: skip
        yield w


async def until(
    reader: EventReader, found: Callable[[list[ServerSentEvent]], bool]
) -> list[ServerSentEvent]:
    async with asyncio.timeout(30), reader.arrived:
        await reader.arrived.wait_for(lambda: found(reader.events))
    return list(reader.events)


def agent_events(count: int) -> Callable[[list[ServerSentEvent]], bool]:
    return lambda events: sum(e.event == "agent" for e in events) >= count


async def agent_conversation(
    worker: Worker, hooks: Receiver, browser: str, texts: list[str], customer_text: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A visitor whose browser says `browser` writes, an agent takes the conversation over
    (no trigger: the handoff recorded no language) and writes `texts`, then the visitor writes
    `customer_text`: (what the visitor was shown of each, the message.customer webhook)."""
    site = await worker.add_site("shop", languages=["de", "en"])
    _, secret = await worker.adapter.sites.add_key("shop")
    await worker.adapter.directory.refresh(force=True)
    agent = bearer(secret)
    async with worker.client() as client:
        client.headers["Accept-Language"] = browser
        visitor = await new_visitor(client, site)
        who, auth = visitor["visitor_id"], bearer(visitor["token"])
        async with open_stream(client, visitor["token"]) as stream:
            hello = await client.post("/v1/messages", headers=auth, json={"text": "Hello"})
            assert hello.status_code == 202, hello.text
            await stream.until_answers(1)
            taken = await client.post(
                "/v1/handoff/take", headers=agent, json={"visitor_id": who, "agent": "Dana"}
            )
            assert taken.status_code == 200, taken.text
            for n, text in enumerate(texts):
                posted = await client.post(
                    "/v1/handoff/messages", headers={**agent, "Idempotency-Key": f"r{n}"},
                    json={"visitor_id": who, "agent": "Dana", "text": text},
                )  # fmt: skip
                assert posted.status_code == 202, posted.text
                await until(stream, agent_events(n + 1))
            shown = [data(e) for e in stream.events if e.event == "agent"]
            wrote = await client.post("/v1/messages", headers=auth, json={"text": customer_text})
            assert wrote.status_code == 202, wrote.text
    ((_, forwarded),) = await hooks.delivered("message.customer")
    return shown, forwarded["message"]


async def test_an_english_agent_is_never_translated_for_an_english_customer(
    worker: Worker, hooks: Receiver, backend: ScriptedBackend
) -> None:
    shown, forwarded = await agent_conversation(
        worker, hooks, "en-US,en;q=0.9", [*SHORT, LONG], "Thanks!"
    )
    assert [(s["text"], s["translated"]) for s in shown] == [
        ("OK, done.", False), ("Sure!", False), (LONG, False)
    ]  # fmt: skip
    assert forwarded["text"] == "Thanks!" and forwarded["translation"] == ""
    assert translations_asked(backend) == []  # no model call for any of them
    (_, agent_hook), *_ = await hooks.delivered("message.agent", 3)
    assert agent_hook["message"]["translation"] == ""


async def test_a_short_text_is_translated_from_its_writers_language_when_they_differ(
    worker: Worker, hooks: Receiver, backend: ScriptedBackend
) -> None:
    shown, forwarded = await agent_conversation(worker, hooks, "de-DE,de;q=0.9", SHORT, "Danke!")
    assert [(s["text"], s["translated"], s["original"], s["language"]) for s in shown] == [
        ("OK, erledigt.", True, "OK, done.", "en"), ("Klar!", True, "Sure!", "en")
    ]  # fmt: skip
    # The visitor's browser speaks German: "Danke!" is German, though too short to detect.
    assert (forwarded["translation"], forwarded["language"]) == ("Thanks!", "de")
    assert translations_asked(backend) == [*SHORT, "Danke!"]
