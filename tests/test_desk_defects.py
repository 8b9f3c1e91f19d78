"""Help desk and handoff defects found by earlier reviews: each test failed before its fix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

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


async def _until(done: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s}s: {what}")


@pytest.mark.postgres
async def test_a_handoff_request_retried_after_the_agent_resolved_it_does_not_reopen_it(
    postgres_url: str,
) -> None:
    """Chatwoot failing (502) while the customer asks for a person: the desk tries the
    request again until Chatwoot answers. An agent who resolved the conversation in the
    meantime saw it reopened by the next try (status open, the handoff note posted) and the
    customer's next message went unanswered. Resolution wins: the retry finds the request
    superseded and stops; the bot answers the customer again."""
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, ScriptedBackend(), retries=1) as w:
        fake = w.fake
        conv = fake.conversation(92)
        for _ in range(10):
            fake.fail_next(502, retry_after="")
        assert await fake.contact_says(conv, "I want to talk to a human") == 200

        def status_refused() -> bool:
            return any(c.path.endswith("/toggle_status") and c.status == 502 for c in fake.calls)

        await _until(status_refused, "the handoff request was refused once")
        assert (await w.app.desk.status(_key(92))).state is HandoffState.WAITING
        await fake.agent_sets_status(conv, "resolved")
        assert (await w.app.desk.status(_key(92))).state is HandoffState.BOT
        await w.idle()
        assert conv.status == "resolved"
        assert fake.private_notes(conv) == []
        assert (await w.app.desk.status(_key(92))).state is HandoffState.BOT
