"""Hostile review of the support channel's desk side (prefix rvh): the real app and support
adapter served by uvicorn over real PostgreSQL and Redis, a scripted model at the backend
seam. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from backends.base import Chunk, GenerationRequest
from bot.storage import migrate
from bot.types import ConversationKey, Role
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    ORIGIN,
    Worker,
    bearer,
    last_user_text,
    new_visitor,
    support_worker,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

REPLY = "We send the replacement to 1 Elm Street on Friday."
TRANSLATE = re.compile(r"^Translate the user message from .+? into (\w+)\.", re.MULTILINE)


class SlowTranslator(ScriptedBackend):
    """Answers chat at once; a translation waits for `gate` (a model busy for seconds)."""

    def __init__(self) -> None:
        super().__init__(lambda r: f"You said {last_user_text(r)}")
        self.translating = asyncio.Event()
        self.gate = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        system = request.messages[0].content if request.messages[0].role is Role.SYSTEM else ""
        if TRANSLATE.search(system):
            self.translating.set()
            await self.gate.wait()
        async for chunk in super().stream(request):
            yield chunk


@pytest.fixture
async def backend() -> SlowTranslator:
    return SlowTranslator()


@pytest.fixture
async def worker(
    postgres_url: str, redis_url: str, key_prefix: str, backend: SlowTranslator
) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        yield w


async def test_an_agents_reply_in_flight_at_erasure_is_not_kept(
    worker: Worker, backend: SlowTranslator
) -> None:
    """The visitor erases its data while the agent's reply is being translated for it: the
    bot's answers in flight are dropped from the event log then (adapters/support/adapter.py
    `deliver`), but the agent's reply was appended after the erasure and stayed readable
    (its text and the agent's original) for events_ttl_s."""
    site = await worker.add_site("shop", languages=["de", "en"])
    _, secret = await worker.adapter.sites.add_key("shop")
    await worker.adapter.directory.refresh(force=True)
    agent = bearer(secret)
    async with worker.client() as client:
        client.headers["Accept-Language"] = "de-DE"
        visitor = await new_visitor(client, site)
        who, auth = visitor["visitor_id"], bearer(visitor["token"])
        sent = await client.post("/v1/messages", headers=auth, json={"text": "Hallo"})
        assert sent.status_code == 202, sent.text
        await worker.adapter.idle()
        body = {"visitor_id": who, "agent": "Dana"}
        taken = await client.post("/v1/handoff/take", headers=agent, json=body)
        assert taken.status_code == 200, taken.text
        posted = await client.post(
            "/v1/handoff/messages", headers=agent, json={**body, "text": REPLY}
        )
        assert posted.status_code == 202, posted.text
        async with asyncio.timeout(30):
            await backend.translating.wait()
        erased = await client.delete("/v1/visitor", headers=auth)
        assert erased.status_code == 204
        backend.gate.set()
        await worker.adapter.idle()
        kept = await worker.adapter.events.read(f"shop:{who}", None)
    assert not any("Elm" in event.data for event in kept), kept


async def test_a_conversation_erased_while_waiting_for_a_person_is_not_announced_again(
    worker: Worker,
) -> None:
    """A visitor asks for a person, then erases its data. The conversation row stays
    (renamed) with its handoff state `waiting`, so every start of Parley handed the help desk
    `handoff.requested` for it again (CoreDesk.start reads the waiting ones), for ever, with
    a site named "erased" and no one to answer."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        key = ConversationKey("support", f"shop:{visitor['visitor_id']}")
        asked = await client.post(
            "/v1/messages", headers=auth, json={"text": "I want to talk to a human"}
        )
        assert asked.status_code == 202, asked.text
        await worker.adapter.idle()
        assert (await worker.app.desk.status(key)).state.value == "waiting"
        erased = await client.delete("/v1/visitor", headers=auth)
        assert erased.status_code == 204
    waiting = await worker.app.desk.repo.waiting()
    assert not [w for w in waiting if w[1].chat_id.startswith("erased:")]
    assert key not in [w[1] for w in waiting]


async def test_the_widget_can_read_a_429_for_a_token_or_a_history_page(
    postgres_url: str, redis_url: str, key_prefix: str
) -> None:
    """Over ip_requests, POST /v1/visitors and GET /v1/history answered 429 before they
    checked the caller's site, so without the CORS header: the browser hid the answer from
    the widget (fetch failed as if the server were down), which never learnt Retry-After,
    showed "unavailable" instead of "too many", and retried on its own schedule."""
    await migrate.upgrade(postgres_url)
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, ip_requests=3,
        rate_window_s=20,
    ) as w:  # fmt: skip
        site = await w.add_site("shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            auth = bearer(visitor["token"])
            await client.get("/v1/history", headers=auth)
            await client.get("/v1/history", headers=auth)
            refused = {
                "history": await client.get("/v1/history", headers=auth),
                "visitors": await client.post(
                    "/v1/visitors", headers={"X-Parley-Site-Key": site.public_key}
                ),
            }
    for response in refused.values():
        assert response.status_code == 429
        assert response.headers.get("access-control-allow-origin") == ORIGIN
        assert response.headers["retry-after"] == "20"
