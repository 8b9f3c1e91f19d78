"""Chatwoot's webhook payloads -> what Parley does with them: a pure function, tested without
a network.

Shapes (Chatwoot's `Message#webhook_data` and `Conversations::EventDataPresenter#push_data`,
the same for agent bot and account webhooks):

    message_created   {"event", "id", "content", "message_type": "incoming" | "outgoing" |
                       "activity" | "template", "private", "sender": {"id", "name", "type":
                       "contact" | "user" | "agent_bot"}, "account": {"id"},
                       "conversation": {"id" (the display id), "status", ...}}
    conversation_status_changed, conversation_updated, conversation_opened,
    conversation_resolved
                      the conversation itself at the top level: {"event", "id", "status",
                       "meta": {"assignee": {"id", "name"} | null}, "messages": [{"account_id"}],
                       "updated_at": Unix seconds, a float (`updated_at.to_f`; not in older
                       Chatwoots)}

Only a contact's incoming public text is for the bot; an attachment sent alone is told that
the bot reads text only. Every outgoing message (Parley's own
answers and notes come back as webhooks), activity and template message is ignored without
being recorded, except an agent's private note starting with the reply prefix (the agent's
answer for the customer, to be translated) and an agent's public reply (answering is taking
the conversation: the bot must not talk over the agent).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.kit.actions import Ignore
from bot.types import ConversationKey, Incoming, User

PLATFORM = "chatwoot"
CONVERSATION_EVENTS = frozenset(
    {
        "conversation_status_changed",
        "conversation_updated",
        "conversation_opened",
        "conversation_resolved",
    }
)
# Chatwoot's statuses in which the bot has the conversation.
BOT_STATUSES = frozenset({"pending", "resolved"})


class MalformedWebhook(ValueError):
    """The body is not a webhook Parley can read (400: re-sending it would never help)."""


class ForeignAccount(ValueError):
    """A webhook of another account than `chatwoot.account_id` (403; nothing is recorded)."""


# Chatwoot's ids are PostgreSQL bigints; anything else is not Chatwoot's (and would not fit
# the idempotency key's column): a 400, never a 500 that Chatwoot would retry.
ChatwootId = Annotated[int, Field(ge=1, le=2**63 - 1)]


def shown(value: object, limit: int = 40) -> str:
    """A value from a payload as it may appear in a log line or a 400: its repr (no line
    breaks or invisible characters unescaped), at most `limit` characters of it."""
    return repr(str(value)[:limit])


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Sender(_Model):
    id: ChatwootId
    name: str = ""
    type: str = ""


class _Account(_Model):
    id: ChatwootId


class _Assignee(_Model):
    id: ChatwootId
    name: str = ""


class _Meta(_Model):
    assignee: _Assignee | None = None


class _MessageRef(_Model):
    account_id: ChatwootId | None = None


class _Conversation(_Model):
    id: ChatwootId
    status: str = ""
    meta: _Meta | None = None
    messages: list[_MessageRef] = []
    account: _Account | None = None
    updated_at: float | str | None = None


class _Message(_Model):
    id: ChatwootId
    content: str | None = None
    message_type: str | int
    private: bool = False
    sender: _Sender | None = None
    account: _Account
    conversation: _Conversation
    created_at: str | int | float | None = None
    # `Attachment#push_event_data` each (photos, files); absent when there are none. Only
    # counted: their shape is not checked, the bot reads no attachment.
    attachments: list[object] | None = None


@dataclass(frozen=True, slots=True)
class CustomerMessage:
    """A contact wrote; `status` is the conversation's status in Chatwoot as it was sent."""

    incoming: Incoming
    status: str


@dataclass(frozen=True, slots=True)
class AgentReply:
    """An agent's `/reply` note: `sent_at`, when it was written in Chatwoot (None: unknown)."""

    key: ConversationKey
    text: str
    agent: str
    idempotency_key: str
    sent_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AgentAnswered:
    """An agent answered the customer in Chatwoot, in public (no `/reply` note): `status` is
    the conversation's status in Chatwoot as it was sent, `user_id` the agent's."""

    key: ConversationKey
    agent: str
    user_id: int
    status: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    key: ConversationKey
    status: str
    agent: str  # the assignee ("" when nobody is assigned)
    # When Chatwoot last updated the conversation (Unix seconds, its clock): orders updates
    # delivered out of order. None: the payload has none (an older Chatwoot).
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class CustomerAttachment:
    """A contact sent attachments alone (a photo, a PDF), no text: `incoming.text` is empty;
    `status` as in CustomerMessage."""

    incoming: Incoming
    status: str


Action = CustomerMessage | CustomerAttachment | AgentReply | AgentAnswered | StatusChange | Ignore


def conversation_key(account_id: int, conversation_id: int) -> ConversationKey:
    return ConversationKey(PLATFORM, f"{account_id}:{conversation_id}")


def agent_name(user_id: int) -> str:
    """How a Chatwoot agent is named in the desk, so the bridge knows what came from Chatwoot."""
    return f"{PLATFORM}:{user_id}"


def read(
    body: bytes, *, reply_prefix: str, account_id: int | None = None, named_only: bool = False
) -> Action:
    """A webhook body as an action; MalformedWebhook or ForeignAccount (never another
    exception). `account_id`: the only account served (when set), and the account of
    conversation events that name none, unless `named_only` (a delivery that may be another
    account's: such an event is ignored)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedWebhook("the body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        raise MalformedWebhook("not a Chatwoot webhook (no event)")
    event = data["event"]
    try:
        if event == "message_created":
            message = _Message.model_validate(data)
            _served(message.account.id, account_id)
            return _message(message, reply_prefix)
        if event in CONVERSATION_EVENTS:
            return _status(_Conversation.model_validate(data), account_id, named_only)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise MalformedWebhook(f"{shown(event)}: {where[:80]}: {first['msg'][:80]}") from None
    return Ignore(f"event {shown(event)}")


def _served(account: int, account_id: int | None) -> None:
    if account_id is not None and account != account_id:
        raise ForeignAccount(f"account {account} is not chatwoot.account_id")


def _message(message: _Message, reply_prefix: str) -> Action:
    key = conversation_key(message.account.id, message.conversation.id)
    sender = message.sender
    kind = str(message.message_type)
    text = message.content or ""
    if kind in ("incoming", "0") and not message.private:
        if sender is None or sender.type.lower() != "contact":
            return Ignore("incoming, not from a contact")
        if not text.strip() and not message.attachments:
            return Ignore("no text")
        user = User(PLATFORM, str(sender.id), sender.name)
        incoming = Incoming(
            key=key,
            user=user,
            text=text,
            # Scoped: another Chatwoot (or account) numbers its messages from 1 too.
            idempotency_key=message_key(message.account.id, message.id),
            platform_message_id=str(message.id),
            sent_at=sent_at(message.created_at),
        )
        if not text.strip():
            return CustomerAttachment(incoming, message.conversation.status)
        return CustomerMessage(incoming, message.conversation.status)
    if kind in ("outgoing", "1") and message.private and text.startswith(reply_prefix):
        if sender is None or sender.type.lower() != "user":
            return Ignore("a note not written by an agent")
        reply = text[len(reply_prefix) :].strip()
        if not reply:
            return Ignore("an empty reply")
        idempotency_key = message_key(message.account.id, message.id)
        when = sent_at(message.created_at)
        return AgentReply(key, reply, agent_name(sender.id), idempotency_key, when)
    person = sender is not None and sender.type.lower() == "user"  # not a bot (Parley's own)
    if kind in ("outgoing", "1") and not message.private and sender is not None and person:
        when = sent_at(message.created_at)
        status = message.conversation.status
        return AgentAnswered(key, agent_name(sender.id), sender.id, status, when)
    return Ignore(f"{shown(kind)} message")


def message_key(account_id: int, message_id: int) -> str:
    """A Chatwoot message's idempotency key: `chatwoot:<account>:<message id>`."""
    return f"{PLATFORM}:{account_id}:{message_id}"


def sent_at(value: str | int | float | None) -> datetime:
    """Chatwoot's created_at: Unix seconds in some payloads, ISO 8601 (or "... UTC") in
    others; now when it is absent or unreadable."""
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value.replace(" UTC", "+00:00").replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return datetime.now(UTC)


def _status(conversation: _Conversation, account_id: int | None, named_only: bool) -> Action:
    account = conversation.account.id if conversation.account is not None else None
    if account is None:
        account = next((m.account_id for m in conversation.messages if m.account_id), None)
    if account is None and named_only and account_id is not None:
        # Maybe another account's conversation of the same number (a conversation without
        # messages names none): Parley's have the customer's message, which names it.
        return Ignore("a conversation event naming no account, signed by the agent bot")
    account = account or account_id
    if account is None:
        raise MalformedWebhook("conversation event without an account (set chatwoot.account_id)")
    _served(account, account_id)
    if not conversation.status:
        return Ignore("no status")
    meta = conversation.meta
    assignee = meta.assignee if meta is not None else None
    agent = agent_name(assignee.id) if assignee is not None else ""
    key = conversation_key(account, conversation.id)
    return StatusChange(key, conversation.status, agent, updated_at(conversation.updated_at))


def updated_at(value: float | str | None) -> float | None:
    """Chatwoot's updated_at of a conversation as Unix seconds: a number (push_data's
    `updated_at.to_f`) or an ISO 8601 string; None when absent, unreadable or not finite."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace(" UTC", "+00:00").replace("Z", "+00:00"))
        except ValueError:
            return None
        value = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return float(value) if value is not None and math.isfinite(value) else None
