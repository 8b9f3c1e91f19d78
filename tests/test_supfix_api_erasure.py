"""Erasing a visitor (DELETE /v1/visitor) over real PostgreSQL and Redis also removes its daily
token usage (its site's usage keeps the totals) and the cached handoff state of its
conversation (the agent's name, the visitor's language); and the agent API's booleans take
only JSON booleans; a visitor erased between its message's write and the message's event
for its other tabs has the text shown in none of them. The real app and adapter over HTTP;
the model is scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bot.handoff.models import HandoffEventRow
from bot.storage import keys, migrate
from bot.storage.models import ConversationRow
from bot.storage.usage import Subject, UsageLog
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    Worker,
    bearer,
    data,
    last_user_text,
    new_visitor,
    open_stream,
    support_worker,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def worker(postgres_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Worker]:
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda r: f"You said {last_user_text(r)}")
    async with support_worker(
        postgres_url, redis_url=redis_url, key_prefix=key_prefix, backend=backend
    ) as w:
        yield w


async def server_key(worker: Worker, site: str) -> dict[str, str]:
    _, secret = await worker.adapter.sites.add_key(site)
    await worker.adapter.directory.refresh(force=True)
    return bearer(secret)


async def usage_of(worker: Worker, subject: Subject) -> list[int]:
    """The subject's tokens per day, as `parley usage --user` reads them."""
    await worker.app.budgets.usage.flush()  # written behind: what was counted is in SQL now
    since = date.today() - timedelta(days=2)
    lines = await UsageLog(worker.app.store.engine).report(since, subject)
    return [line.spent.tokens for line in lines]


async def conversation_id(worker: Worker, chat_id: str) -> int:
    c = ConversationRow
    async with worker.app.store.engine.connect() as conn:
        found = await conn.scalar(sa.select(c.id).where(c.chat_id == chat_id))
    assert found is not None
    return int(found)


async def test_supfix_erasure_removes_the_visitors_usage_and_keeps_the_sites(
    worker: Worker,
) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        sent = await client.post("/v1/messages", headers=auth, json={"text": "my order"})
        assert sent.status_code == 202, sent.text
        await worker.adapter.idle()
        user = Subject("user", f"support:shop:{visitor['visitor_id']}")
        shop = Subject("site", "shop")
        assert await usage_of(worker, user) and await usage_of(worker, shop)
        site_tokens = await usage_of(worker, shop)
        erased = await client.delete("/v1/visitor", headers=auth)
    assert erased.status_code == 204
    assert await usage_of(worker, user) == []
    assert await usage_of(worker, shop) == site_tokens  # the totals, without the visitor's id
    report = await UsageLog(worker.app.store.engine).report(date.today() - timedelta(days=2))
    assert not any(visitor["visitor_id"] in line.subject.name for line in report)


async def test_supfix_erasure_drops_the_cached_handoff_state(worker: Worker) -> None:
    site = await worker.add_site("shop")
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        who, auth = visitor["visitor_id"], bearer(visitor["token"])
        sent = await client.post("/v1/messages", headers=auth, json={"text": "hello"})
        assert sent.status_code == 202, sent.text
        await worker.adapter.idle()
        taken = await client.post(
            "/v1/handoff/take", headers=agent, json={"visitor_id": who, "agent": "Dana"}
        )
        assert taken.status_code == 200, taken.text
        conversation = await conversation_id(worker, f"shop:{who}")
        cached = keys.handoff(conversation)
        assert await worker.app.cache.get(cached) is not None  # the agent's name is cached
        assert await handoff_events(worker, conversation) > 0
        erased = await client.delete("/v1/visitor", headers=auth)
    assert erased.status_code == 204
    assert await worker.app.cache.get(cached) is None
    # The handoff's audit trail (states, reasons, the agent's name, times) went too.
    assert await handoff_events(worker, conversation) == 0


async def handoff_events(worker: Worker, conversation: int) -> int:
    e = HandoffEventRow
    async with worker.app.store.engine.connect() as conn:
        query = sa.select(sa.func.count()).where(e.conversation_id == conversation)
        return int(await conn.scalar(query) or 0)


@pytest.mark.parametrize(
    "force", ["yes", 1, "true", "1"], ids=["yes", "one", "true-text", "one-text"]
)
async def test_supfix_the_agent_api_takes_only_a_json_boolean(
    worker: Worker, force: object
) -> None:
    site = await worker.add_site("shop")
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        sent = await client.post(
            "/v1/messages", headers=bearer(visitor["token"]), json={"text": "hello"}
        )
        assert sent.status_code == 202, sent.text
        body = {"visitor_id": visitor["visitor_id"], "agent": "Dana", "force": force}
        refused = await client.post("/v1/handoff/take", headers=agent, json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json() == {
            "error": {
                "code": "invalid_request",
                "message": "force: Input should be a valid boolean",
            }
        }
        taken = await client.post("/v1/handoff/take", headers=agent, json={**body, "force": True})
    assert taken.status_code == 200, taken.text


# A review of 448c566: the event took the text from the write and no longer read the message
# back, which was also the "erased already" check.
async def test_a_message_erased_before_its_event_reaches_no_other_tab(worker: Worker) -> None:
    site = await worker.add_site("shop")
    async with worker.client() as client, worker.client() as eraser:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        intake = worker.app.intake
        real = intake.submit

        async def submit_then_erased(incoming: Any) -> Any:
            recorded = await real(incoming)
            erased = await eraser.delete("/v1/visitor", headers=auth)  # the visitor, meanwhile
            assert erased.status_code == 204
            return recorded

        async with open_stream(client, visitor["token"]) as stream:
            intake.submit = submit_then_erased  # type: ignore[method-assign]
            try:
                posted = await client.post(
                    "/v1/messages", headers=auth, json={"text": "my address is 1 Elm St"}
                )
            finally:
                del intake.submit
            assert posted.status_code == 202, posted.text
            await asyncio.sleep(1.5)
            shown = [data(e) for e in stream.events if e.event == "message"]
    assert shown == []  # erased before the event: its text is shown nowhere


async def test_an_erasure_right_after_an_answer_leaves_no_usage_of_the_visitor(
    worker: Worker,
) -> None:
    """Usage is written behind (budget.usage_flush_s): a visitor who erases its data right
    after an answer, before the worker wrote that turn's sum, must not get its row (and its
    id) back in `parley usage` from the next flush."""
    site = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        auth = bearer(visitor["token"])
        sent = await client.post("/v1/messages", headers=auth, json={"text": "my order"})
        assert sent.status_code == 202, sent.text
        await worker.adapter.idle()  # answered; its usage waits for the next flush
        erased = await client.delete("/v1/visitor", headers=auth)
    assert erased.status_code == 204
    user = Subject("user", f"support:shop:{visitor['visitor_id']}")
    assert await usage_of(worker, user) == []
    assert await usage_of(worker, Subject("site", "shop"))  # the site's totals are kept
