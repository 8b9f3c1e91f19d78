"""A visitor erased between the message's write and its other-tab event (a review of 448c566:
the event then carried the erased text to the visitor's open tabs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.storage import migrate
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
