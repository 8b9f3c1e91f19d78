"""The Chatwoot API client against the fake Chatwoot (a real HTTP server): retries on 429
after Retry-After, one error type for every refusal, the token never in the logs; and the
webhook payloads read into actions, as Chatwoot sends them."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import pytest
from tenacity import RetryCallState

from adapters.chatwoot.client import ChatwootClient, ChatwootError, ConversationRef
from adapters.chatwoot.payloads import (
    AgentAnswered,
    AgentReply,
    CustomerMessage,
    MalformedWebhook,
    StatusChange,
    read,
)
from adapters.chatwoot.settings import ChatwootSettings
from adapters.kit.actions import Ignore
from tests.fake_chatwoot import ACCOUNT, BOT_SECRET, TOKEN, FakeChatwoot


def _settings(url: str, token: str = TOKEN, retries: int = 2) -> ChatwootSettings:
    return ChatwootSettings(
        url=url, api_access_token=token, webhook_secret=BOT_SECRET, retries=retries
    )


async def test_a_429_is_retried_after_retry_after_and_then_succeeds() -> None:
    fake = FakeChatwoot()
    conv = fake.conversation(5)
    async with fake.serving() as url:
        client = ChatwootClient(_settings(url))
        chose: list[float] = []  # the pause the client chose before each retry
        wait = client.wait

        def recorded(state: RetryCallState) -> float:
            chose.append(wait(state))
            return chose[-1]

        client.wait = recorded  # type: ignore[assignment,method-assign]
        fake.fail_next(429, retry_after="1")
        await client.post_message(ConversationRef(ACCOUNT, 5), "hello", private=False)
        await client.aclose()
    assert [c.status for c in fake.api_calls("/messages")] == [429, 200]
    assert chose == [1.0]  # Chatwoot's Retry-After, not the quick exponential pause (0.5 s)
    assert fake.public_replies(conv) == ["hello"]


@pytest.mark.parametrize(
    ("token", "conversation", "status"),
    [("wrong-token", 5, 401), (TOKEN, 99, 404)],
)
async def test_refusals_are_one_error_type_not_retried(
    token: str, conversation: int, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeChatwoot()
    fake.conversation(5)
    caplog.set_level(logging.DEBUG)
    async with fake.serving() as url:
        client = ChatwootClient(_settings(url, token))
        with pytest.raises(ChatwootError) as raised:
            await client.toggle_status(ConversationRef(ACCOUNT, conversation), "open")
        await client.aclose()
    assert raised.value.status == status
    assert str(status) in str(raised.value)
    assert len(fake.api_calls("/toggle_status")) == 1
    assert token not in caplog.text and TOKEN not in caplog.text


async def test_a_bad_body_is_422_and_retries_give_up_on_5xx() -> None:
    fake = FakeChatwoot()
    fake.conversation(5)
    async with fake.serving() as url:
        client = ChatwootClient(_settings(url, retries=1))
        with pytest.raises(ChatwootError) as bad:
            await client.toggle_status(ConversationRef(ACCOUNT, 5), "archived")
        fake.fail_next(503, retry_after="0")
        fake.fail_next(503, retry_after="0")
        with pytest.raises(ChatwootError) as down:
            await client.post_message(ConversationRef(ACCOUNT, 5), "hi", private=True)
        await client.aclose()
    assert bad.value.status == 422
    assert down.value.status == 503
    assert [c.status for c in fake.api_calls("/messages")] == [503, 503]


async def test_an_unreachable_chatwoot_is_a_chatwoot_error() -> None:
    client = ChatwootClient(_settings("http://127.0.0.1:9", retries=0))
    with pytest.raises(ChatwootError) as raised:
        await client.post_message(ConversationRef(ACCOUNT, 5), "hi", private=False)
    await client.aclose()
    assert raised.value.status == 0


# -- payloads ----------------------------------------------------------------------------------


def _body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def test_a_contacts_message_in_a_pending_conversation_is_for_the_bot() -> None:
    fake = FakeChatwoot()
    conv = fake.conversation(12)
    message = fake.new_message(
        conv, "Wo ist meine Bestellung?", "incoming", private=False, sender=conv.contact
    )
    action = read(_body(fake.message_payload(conv, message)), reply_prefix="/reply ")
    assert isinstance(action, CustomerMessage)
    assert action.status == "pending"
    incoming = action.incoming
    assert (incoming.key.platform, incoming.key.chat_id) == ("chatwoot", f"{ACCOUNT}:12")
    assert incoming.idempotency_key == f"chatwoot:{ACCOUNT}:{message['id']}"
    assert incoming.user.user_id == str(conv.contact["id"])
    assert incoming.text == "Wo ist meine Bestellung?"


def test_outgoing_private_and_activity_messages_are_ignored_but_an_agents_reply_note() -> None:
    fake = FakeChatwoot()
    conv = fake.conversation(12)
    agent = {"id": 42, "name": "Alex", "type": "user"}
    bot = {"id": 3, "name": "Parley", "type": "agent_bot"}
    cases = [
        ("our answer", "outgoing", False, bot),
        ("our note", "outgoing", True, bot),
        ("an agent's plain note", "outgoing", True, agent),
        ("Conversation was marked resolved", "activity", False, bot),
    ]
    for text, kind, private, sender in cases:
        message = fake.new_message(conv, text, kind, private=private, sender=sender)
        assert isinstance(
            read(_body(fake.message_payload(conv, message)), reply_prefix="/reply "), Ignore
        )
    public = fake.new_message(conv, "an agent's public answer", "outgoing", private=False,
                              sender=agent)  # fmt: skip
    answered = read(_body(fake.message_payload(conv, public)), reply_prefix="/reply ")
    assert isinstance(answered, AgentAnswered)  # answering takes it (the adapter decides)
    assert (answered.agent, answered.user_id, answered.status) == ("chatwoot:42", 42, "pending")
    note = fake.new_message(
        conv, "/reply Your order ships today.", "outgoing", private=True, sender=agent
    )
    action = read(_body(fake.message_payload(conv, note)), reply_prefix="/reply ")
    assert isinstance(action, AgentReply)
    assert action == AgentReply(
        action.key, "Your order ships today.", "chatwoot:42", f"chatwoot:{ACCOUNT}:{note['id']}",
        datetime.fromisoformat(note["created_at"]),
    )  # fmt: skip


def test_status_events_name_the_conversation_and_the_assignee() -> None:
    fake = FakeChatwoot()
    conv = fake.conversation(12, status="open")
    conv.assignee = {"id": 42, "name": "Alex", "type": "user"}
    payload = {**fake.conversation_data(conv), "event": "conversation_status_changed"}
    action = read(_body(payload), reply_prefix="/reply ", account_id=ACCOUNT)
    assert isinstance(action, StatusChange)
    assert (action.key.chat_id, action.status, action.agent) == (
        f"{ACCOUNT}:12",
        "open",
        "chatwoot:42",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"event": 5}',
        b'{"event": "message_created", "id": 1}',
        b'{"event": "message_created", "id": "x", "message_type": "incoming", '
        b'"account": {"id": 1}, "conversation": {"id": 2}}',
        b'{"event": "conversation_status_changed", "id": 2, "status": "open"}',
        b"[" * 100_000,
    ],
)
def test_malformed_webhooks_are_one_error_with_a_short_reason(body: bytes) -> None:
    with pytest.raises(MalformedWebhook) as raised:
        read(body, reply_prefix="/reply ")
    assert 0 < len(str(raised.value)) < 200
