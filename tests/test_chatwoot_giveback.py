"""Chatwoot's resolve while an agent's reply is still on its way to the customer. The give-back
comes after the replies sent before it (docs/support-desk.md, "Give-back after the replies"),
and may wait for them up to delivery_grace_s plus lock_ttl_s (21 s by default); Chatwoot waits
5 s for a webhook's answer and never sends it again after a timeout (lib/webhooks/trigger.rb:
RestClient `timeout: 5`, the error rescued; its agent bot job retries 429 and 500 only). The
webhook is answered at once, the give-back applied after the reply, whether Chatwoot waited
for the answer or hung up, and at a stop. The fake Chatwoot (tests/fake_chatwoot.py, with
Chatwoot's timeout) sends signed webhooks to Parley's real HTTP host, over PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.handoff.types import HandoffState
from bot.storage import migrate
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, ChatwootWorker, Conversation, chatwoot_worker

pytestmark = pytest.mark.postgres

REPLY = "Your refund is on its way."
RESOLVE_EVENTS = ("conversation_resolved", "conversation_status_changed", "conversation_updated")


def key_of(conv: Conversation) -> ConversationKey:
    return ConversationKey("chatwoot", f"{ACCOUNT}:{conv.id}")


@pytest.fixture
async def worker(postgres_url: str) -> AsyncIterator[ChatwootWorker]:
    """With a long wait for replies (10 minutes): a give-back that waits it out holds a test
    up to its hang guard."""
    await migrate.upgrade(postgres_url)
    waits = {"delivery_grace_s": 300, "lock_ttl_s": 300}
    async with chatwoot_worker(
        postgres_url, ScriptedBackend(), conversation=waits, timeout_s=120
    ) as w:
        try:
            yield w
        finally:  # a failed test's held post may end (the worker's stop waits for its turn)
            if w.fake.hold_public_posts is not None:
                w.fake.hold_public_posts.set()


async def state(w: ChatwootWorker, conv: Conversation) -> HandoffState:
    return (await w.app.desk.status(key_of(conv))).state


async def taken_with_a_held_reply(w: ChatwootWorker, number: int) -> tuple[Conversation, list]:
    """An agent took the conversation in Chatwoot and answered with a `/reply` note; Parley's
    post of the reply to the customer is held (Chatwoot slow to take it). Returns the desk's
    state as each held post reached Chatwoot."""
    fake = w.fake
    conv = fake.conversation(number)
    await fake.contact_says(conv, "Hello")
    await w.idle()
    await fake.agent_sets_status(conv, "open")
    await w.idle()
    assert await state(w, conv) is HandoffState.HUMAN
    fake.hold_public_posts = asyncio.Event()
    seen: list[HandoffState] = []

    async def note_state() -> None:
        seen.append(await state(w, conv))

    fake.on_public_post = note_state
    assert await fake.agent_writes(conv, f"/reply {REPLY}") == 200
    return conv, seen


async def resolve(w: ChatwootWorker, conv: Conversation) -> list[int]:
    """An agent resolves the conversation in Chatwoot: Parley's answers to its three status
    webhooks (0: Chatwoot gave up waiting), once each was answered or given up."""
    before = len(w.fake.deliveries)
    await w.fake.agent_sets_status(conv, "resolved")
    return [status for event, status in w.fake.deliveries[before:] if event in RESOLVE_EVENTS]


async def back_with_the_bot(w: ChatwootWorker, conv: Conversation) -> None:
    """Once the give-back applied in the background is done (the desk's idle waits for it)."""
    async with asyncio.timeout(60):  # a hang guard only
        await w.idle()
    assert await state(w, conv) is HandoffState.BOT


async def test_a_resolve_is_answered_within_chatwoots_timeout_while_a_reply_is_held(
    worker: ChatwootWorker,
) -> None:
    """It was answered only after the reply (up to 21 s by default): Chatwoot gave up after
    its 5 s (status 0 here) while the give-back still waited."""
    w = worker
    conv, seen = await taken_with_a_held_reply(w, 61)
    assert await resolve(w, conv) == [200, 200, 200]
    assert await state(w, conv) is HandoffState.HUMAN  # not before the reply
    assert w.fake.hold_public_posts is not None
    w.fake.hold_public_posts.set()
    await back_with_the_bot(w, conv)
    assert w.fake.public_replies(conv).count(REPLY) == 1
    assert seen == [HandoffState.HUMAN]  # the reply reached the customer before the give-back


async def test_a_resolve_chatwoot_hung_up_on_is_still_applied_after_the_reply(
    worker: ChatwootWorker,
) -> None:
    """Chatwoot gives up on Parley's answer (here at once) and never sends it again: the
    give-back is applied all the same, after the reply, once."""
    w = worker
    conv, seen = await taken_with_a_held_reply(w, 62)
    w.fake.webhook_timeout_s = 0.01
    assert await resolve(w, conv) == [0, 0, 0]  # Chatwoot hung up on each
    assert w.fake.hold_public_posts is not None
    w.fake.hold_public_posts.set()
    await back_with_the_bot(w, conv)
    assert w.fake.public_replies(conv).count(REPLY) == 1
    assert seen == [HandoffState.HUMAN]


async def test_a_resolve_waiting_for_a_reply_is_applied_when_the_worker_stops(
    worker: ChatwootWorker,
) -> None:
    """The webhook was answered; the worker stops before the reply reaches the customer: the
    give-back is applied during the stop (its turns no longer start here), not lost with the
    worker, and the reply stays pending for the next worker."""
    w = worker
    conv, _ = await taken_with_a_held_reply(w, 63)
    assert await resolve(w, conv) == [200, 200, 200]
    # The stop as adapters.kit.runner makes it: the turns' grace, then the desk's last events.
    await w.app.manager.drain(0.1)
    async with asyncio.timeout(60):  # a hang guard only: the wait for the reply is 600 s
        await w.app.desk.idle()
    assert await state(w, conv) is HandoffState.BOT
    cid = await w.app.store.conversation_id(key_of(conv))
    assert cid is not None
    pending = await w.app.store.pending(cid, 10)
    assert [m.content for m in pending] == [REPLY]
    assert w.fake.hold_public_posts is not None
    w.fake.hold_public_posts.set()  # the fake's held request may end
