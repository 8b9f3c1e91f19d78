"""Help desk and handoff defects found by earlier reviews: each test failed before its fix."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.handoff.types import HandoffState
from bot.storage import migrate
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, ChatwootWorker, chatwoot_worker


def _key(conversation: int) -> ConversationKey:
    return ConversationKey("chatwoot", f"{ACCOUNT}:{conversation}")


@pytest.fixture
async def chatwoot(postgres_url: str) -> AsyncIterator[ChatwootWorker]:
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, ScriptedBackend()) as w:
        yield w


@pytest.mark.postgres
async def test_a_reassigned_conversation_records_the_new_agent(chatwoot: ChatwootWorker) -> None:
    """A conversation reassigned in Chatwoot (conversation_updated, its changed_attributes
    naming assignee_id) kept the first agent in the handoff state: the desk's agent follows
    Chatwoot's assignee, with an audit row for the change; unassigning changes nothing."""
    fake = chatwoot.fake
    conv = fake.conversation(91)
    await fake.contact_says(conv, "I want to talk to a person")
    await chatwoot.idle()
    await fake.agent_assigns(conv, {"id": 42, "name": "Alex", "type": "user"})
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(91))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:42")
    await fake.agent_assigns(conv, {"id": 43, "name": "Sam", "type": "user"})
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(91))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:43")
    assert conv.status == "open"
    await fake.agent_assigns(conv, None)
    await chatwoot.idle()
    status = await chatwoot.app.desk.status(_key(91))
    assert (status.state, status.agent) == (HandoffState.HUMAN, "chatwoot:43")
    cid = await chatwoot.app.store.conversation_id(_key(91))
    assert cid is not None
    moves = [(f, t) for f, t, _, _ in await chatwoot.app.desk.repo.events(cid)]
    assert moves == [("bot", "waiting"), ("waiting", "human"), ("human", "human")]
