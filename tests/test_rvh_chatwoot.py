"""Hostile review of the Chatwoot bridge (prefix rvh), end to end as tests/test_chatwoot.py:
the fake Chatwoot sends signed webhooks to Parley's real HTTP host over real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.storage import migrate
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, ChatwootWorker, chatwoot_worker

pytestmark = pytest.mark.postgres


@pytest.fixture
async def worker(postgres_url: str) -> AsyncIterator[ChatwootWorker]:
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, ScriptedBackend()) as w:
        yield w


async def test_an_agent_reply_delivered_again_after_resolving_does_not_take_it_back(
    worker: ChatwootWorker,
) -> None:
    """Chatwoot delivers a webhook again (its job retries a 500 or a timeout; anyone who saw
    a signed delivery may replay it within max_age_s). An agent's `/reply` note delivered
    again after the agent resolved the conversation took it from the bot once more: the bot
    stopped answering the customer, with no agent on it, until someone noticed. A repeat of
    a recorded reply changes nothing, whatever the state is now."""
    fake = worker.fake
    conv = fake.conversation(71)
    key = ConversationKey("chatwoot", f"{ACCOUNT}:71")
    await fake.contact_says(conv, "hello")
    await worker.idle()
    agent = {"id": 42, "name": "Alex", "type": "user"}
    note = fake.new_message(conv, "/reply Your parcel is on its way.", "outgoing",
                            private=True, sender=agent)  # fmt: skip
    delivery = fake.message_payload(conv, note)
    assert await fake.send(delivery) == 200
    await worker.idle()
    assert (await worker.app.desk.status(key)).state.value == "human"
    await fake.agent_sets_status(conv, "resolved")
    await worker.idle()
    assert (await worker.app.desk.status(key)).state.value == "bot"
    replies = list(fake.public_replies(conv))

    assert await fake.send(delivery) == 200  # the same delivery again
    await worker.idle()
    assert (await worker.app.desk.status(key)).state.value == "bot"
    await fake.contact_says(conv, "one more question")
    await worker.idle()
    assert fake.public_replies(conv) == [*replies, "echo: one more question"]
