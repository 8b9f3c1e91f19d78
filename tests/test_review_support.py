"""Hostile review of the support API and the Chatwoot bridge: each test failed on the code
as it was found."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import pytest
import sqlalchemy as sa

from adapters.chatwoot.client import ChatwootClient, ChatwootError, ConversationRef
from adapters.chatwoot.settings import ChatwootSettings
from backends.base import Chunk, GenerationRequest
from bot.storage import migrate
from bot.storage.models import MessageRow
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    GatedBackend,
    Worker,
    bearer,
    last_user_text,
    new_visitor,
    support_worker,
)


@pytest.fixture
async def worker(postgres_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda r: f"You said {last_user_text(r)}")
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        yield w


def _client(handler: httpx.MockTransport) -> ChatwootClient:
    settings = ChatwootSettings(
        url="https://chatwoot.example", api_access_token="t" * 24, retries=3
    )
    client = ChatwootClient(settings, transport=handler)
    client.wait = lambda state: 0.0  # type: ignore[assignment,method-assign]
    return client


@pytest.mark.parametrize(
    "failure",
    [
        lambda request: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=request)),
        lambda request: httpx.Response(502),
        lambda request: httpx.Response(500),
    ],
    ids=["read-timeout", "502", "500"],
)
async def test_review_support_a_message_chatwoot_may_have_created_is_not_posted_twice(
    failure: object,
) -> None:
    """Chatwoot got the message (it is created) but the answer was lost: posting it again
    shows the customer the same answer twice."""
    posted: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        posted.append(request.content)
        if len(posted) == 1:
            return failure(request)  # type: ignore[operator,no-any-return]
        return httpx.Response(200, json={"id": len(posted)})

    client = _client(httpx.MockTransport(handle))
    with pytest.raises(ChatwootError):
        await client.post_message(ConversationRef(1, 5), "hello", private=False)
    await client.aclose()
    assert len(posted) == 1


async def test_review_support_a_message_that_never_reached_chatwoot_is_retried() -> None:
    posted: list[bytes] = []

    def handle(request: httpx.Request) -> httpx.Response:
        posted.append(request.content)
        if len(posted) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(posted) == 2:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"id": 9})

    client = _client(httpx.MockTransport(handle))
    await client.post_message(ConversationRef(1, 5), "hello", private=False)
    await client.aclose()
    assert len(posted) == 3


async def test_review_support_a_status_change_is_retried_after_a_timeout() -> None:
    calls: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(502) if len(calls) == 2 else httpx.Response(200, json={})

    client = _client(httpx.MockTransport(handle))
    await client.toggle_status(ConversationRef(1, 5), "open")
    await client.aclose()
    assert len(calls) == 3


class _StartedBackend(GatedBackend):
    """GatedBackend that says when the turn's generation began."""

    def __init__(self, words: list[str]) -> None:
        super().__init__(words)
        self.started = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.started.set()
        async for chunk in super().stream(request):
            yield chunk


@pytest.mark.postgres
@pytest.mark.redis
async def test_review_support_an_answer_in_flight_at_erasure_is_not_kept(
    postgres_url: str, redis_url: str, key_prefix: str
) -> None:
    """The visitor erases its data while the bot is still answering: the answer (which may
    repeat what the visitor wrote) must not be stored afterwards."""
    await migrate.upgrade(postgres_url)
    backend = _StartedBackend(["You", " live", " at", " 1 Elm St"])
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            auth = bearer(visitor["token"])
            await client.post("/v1/messages", headers=auth, json={"text": "I live at 1 Elm St"})
            async with asyncio.timeout(30):
                await backend.started.wait()  # the turn is under way
            backend.release(1)
            erased = await client.delete("/v1/visitor", headers=auth)
            assert erased.status_code == 204
            backend.release(3)
            await w.adapter.idle()
            conversation = f"shop:{visitor['visitor_id']}"
            kept = await w.adapter.events.read(conversation, None)
        assert not any("Elm" in event.data for event in kept), kept
        async with w.app.store.engine.connect() as conn:
            rows = (await conn.execute(sa.select(MessageRow.content))).scalars().all()
    assert not any("Elm" in row for row in rows), rows


@pytest.mark.postgres
@pytest.mark.redis
async def test_review_support_an_idempotency_key_reused_for_another_text_is_refused(
    worker: Worker,
) -> None:
    """A second message under a used Idempotency-Key is not a retry: a 202 for it would say
    it was accepted when it was dropped."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        headers = {**bearer(visitor["token"]), "Idempotency-Key": "k-1"}
        first = await client.post("/v1/messages", headers=headers, json={"text": "first"})
        again = await client.post("/v1/messages", headers=headers, json={"text": "first"})
        other = await client.post("/v1/messages", headers=headers, json={"text": "second"})
        await worker.adapter.idle()
    assert first.status_code == again.status_code == 202
    assert again.json()["message_id"] == first.json()["message_id"]
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_mismatch"


@pytest.mark.postgres
@pytest.mark.redis
async def test_review_support_a_retried_message_over_the_rate_limit_is_still_a_retry(
    postgres_url: str, redis_url: str, key_prefix: str
) -> None:
    """Kept as a stub (over the core's rate limit), a message's retry is not a mismatch."""
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda r: "ok")
    async with support_worker(
        postgres_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        backend=backend,
        conversation={"rate_limit_messages": 1},
    ) as w:
        site = await w.add_site("shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            auth = bearer(visitor["token"])
            await client.post("/v1/messages", headers=auth, json={"text": "one"})
            headers = {**auth, "Idempotency-Key": "k-2"}
            first = await client.post("/v1/messages", headers=headers, json={"text": "two"})
            again = await client.post("/v1/messages", headers=headers, json={"text": "two"})
            await w.adapter.idle()
    assert first.status_code == again.status_code == 202
    assert again.json()["message_id"] == first.json()["message_id"]
