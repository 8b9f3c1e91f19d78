"""An agent's give-back comes after the replies the agent sent before it, in the visitor's
event stream and in the history, on one worker and across two (real PostgreSQL and Redis, the
real app served by uvicorn, a scripted model at the backend seam). The replies are delivered by
the conversation's turns; the give-back was applied at once, so "back to the bot" reached the
visitor (and the history) before them."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    GatedBackend,
    Worker,
    bearer,
    data,
    new_visitor,
    open_stream,
    support_worker,
    translating,
)
from tests.test_support_desk import (
    TRANSLATIONS,
    agent_post,
    backend,  # noqa: F401  (fixture)
    hooks,  # noqa: F401  (fixture)
    named,
    pg,  # noqa: F401  (fixture)
    server_key,
    taken_visitor,
    until,
    worker,  # noqa: F401  (fixture)
)
from tests.test_support_desk_webhooks import SECRET, Receiver

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

REPLIES = ("Your refund is on its way.", "Anything else? I am handing you back to the bot.")


def back_to_the_bot(events: list[Any]) -> bool:
    return named("handoff", state="bot")(events) and named("agent", text=REPLIES[-1])(events)


async def reply_then_give_back(
    replying: httpx.AsyncClient, giving_back: httpx.AsyncClient, agent: dict[str, str], who: str
) -> None:
    """Dana's two replies (each 202), then at once her give-back (200, the bot's)."""
    for n, text in enumerate(REPLIES):
        posted = await agent_post(replying, agent, f"r-{n}", visitor_id=who, agent="Dana",
                                  text=text)  # fmt: skip
        assert posted.status_code == 202, posted.text
    back = await giving_back.post("/v1/handoff/give-back", headers=agent,
                                  json={"visitor_id": who, "agent": "Dana"})  # fmt: skip
    assert back.status_code == 200, back.text
    assert back.json()["state"] == "bot"


def assert_given_back_last(events: list[Any], history: list[dict[str, Any]]) -> None:
    shown = [(e.event, data(e)) for e in events if e.event in ("agent", "handoff")]
    order = [d["text"] if kind == "agent" else d["state"] for kind, d in shown]
    assert order[-3:] == [*REPLIES, "bot"], order
    rows = [m["text"] if m["role"] == "agent" else m.get("state") for m in history
            if m["role"] in ("agent", "handoff")]  # fmt: skip
    assert rows[-3:] == [*REPLIES, "bot"], rows


def hooked_worker(
    database_url: str, redis_url: str, key_prefix: str, receiver: Receiver, model: Any
) -> AbstractAsyncContextManager[Worker]:
    """A support worker on `model` whose handoff webhooks go to `receiver`."""
    return support_worker(database_url, redis_url=redis_url, key_prefix=key_prefix,
                          backend=model, webhook={"url": receiver.url, "secret": SECRET},
                          webhook_backoff_max_s=0.1)  # fmt: skip


async def history_of(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    """The history once both replies are in it (each is recorded just after its event)."""
    async with asyncio.timeout(30):
        while True:
            page = (await client.get("/v1/history", headers=bearer(token))).json()
            messages: list[dict[str, Any]] = page["messages"]
            if {m["text"] for m in messages if m["role"] == "agent"} >= set(REPLIES):
                return messages
            await asyncio.sleep(0.05)


async def test_a_give_back_comes_after_the_agents_replies_sent_before_it(
    worker: Worker,  # noqa: F811
) -> None:
    site = await worker.add_site("shop")
    agent = await server_key(worker, "shop")
    async with worker.client() as client:
        who, token = await taken_visitor(client, agent, site)
        async with open_stream(client, token) as stream:
            await reply_then_give_back(client, client, agent, who)
            events = await until(stream, back_to_the_bot)
        history = await history_of(client, token)
    assert_given_back_last(events, history)


async def test_a_give_back_on_another_worker_comes_after_the_replies_too(
    pg: str,  # noqa: F811
    redis_url: str,
    key_prefix: str,
    hooks: Receiver,  # noqa: F811
) -> None:
    """The replies are posted to one worker (its turns deliver them), the give-back to
    another, sharing the database and Redis."""

    def a_worker() -> AbstractAsyncContextManager[Worker]:
        model = ScriptedBackend(translating(TRANSLATIONS))
        return hooked_worker(pg, redis_url, key_prefix, hooks, model)

    async with a_worker() as one, a_worker() as two:
        site = await one.add_site("shop")
        agent = await server_key(one, "shop")
        await two.adapter.directory.refresh(force=True)
        async with one.client() as first, two.client() as second:
            who, token = await taken_visitor(first, agent, site)
            async with open_stream(first, token) as stream:
                await reply_then_give_back(first, second, agent, who)
                events = await until(stream, back_to_the_bot)
            history = await history_of(first, token)
    assert_given_back_last(events, history)


async def test_a_give_back_waits_for_a_reply_queued_behind_the_bots_answer(
    pg: str,  # noqa: F811
    redis_url: str,
    key_prefix: str,
    hooks: Receiver,  # noqa: F811
) -> None:
    """The bot's answer still streams as Dana takes the conversation: her replies wait for
    its turn to end, and so does her give-back (applied at once, the visitor saw the bot's
    answer, "back to the bot", then her replies)."""
    model = GatedBackend(["Bot ", "answer ", "part ", "two."])
    async with hooked_worker(pg, redis_url, key_prefix, hooks, model) as w:
        site = await w.add_site("shop")
        agent = await server_key(w, "shop")
        async with w.client() as client:
            visitor = await new_visitor(client, site)
            who, token = visitor["visitor_id"], visitor["token"]
            async with open_stream(client, token) as stream:
                asked = await client.post("/v1/messages", headers=bearer(token),
                                          json={"text": "Order?"})  # fmt: skip
                assert asked.status_code == 202, asked.text
                model.release(1)
                await until(stream, named("delta", text="Bot "))
                taken = await client.post("/v1/handoff/take", headers=agent,
                                          json={"visitor_id": who, "agent": "Dana"})  # fmt: skip
                assert taken.status_code == 200, taken.text
                replied = asyncio.create_task(reply_then_give_back(client, client, agent, who))
                await until(stream, named("handoff", state="human"))
                model.release(10)
                await replied
                events = await until(stream, back_to_the_bot)
            history = await history_of(client, token)
    assert_given_back_last(events, history)
