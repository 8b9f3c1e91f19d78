"""The handoff seam: states, reasons, events, and the protocols between the core's desk and
the bridges to wherever agents work (Chatwoot, the support channel's agent API + webhooks).

Flow: a trigger (or an agent) calls `Desk.request`/`Desk.take`; the desk records the state
change in SQL and hands one `DeskEvent` to every attached bridge whose platforms match. While a
human has a conversation, the customer's messages are recorded, not answered, and each reaches
the bridges as a `customer_message` event (with its translation into the agent's language). An
agent's reply enters through `Desk.agent_message`: recorded once (idempotent on its key), then
delivered to the customer by the conversation's worker like any answer (translated into the
customer's language and marked so; the original is kept in history).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from bot.errors import BotError
from bot.types import ConversationKey


class HandoffError(BotError):
    """A desk call that the conversation's state does not allow (an agent's reply to a
    conversation no person has, a conversation that does not exist). The message is safe to
    return to the caller (an agent API's 409)."""


class HandoffState(enum.StrEnum):
    BOT = "bot"
    WAITING = "waiting"  # a person was asked for; nobody has taken it yet
    HUMAN = "human"


class Reason(enum.StrEnum):
    ASKED = "asked"  # the customer asked for a person
    SENTIMENT = "sentiment"  # the escalation rule over the customer's sentiment
    UNANSWERED = "unanswered"  # the knowledge base had nothing, N times in a row
    KEYWORD = "keyword"  # an operator's keyword rule
    AGENT = "agent"  # an agent took the conversation over
    RESOLVED = "resolved"  # given back to the bot


@dataclass(frozen=True, slots=True)
class HandoffStatus:
    state: HandoffState
    reason: Reason | None = None
    detail: str = ""  # e.g. the keyword that matched, the rule that fired
    since: datetime | None = None
    agent: str = ""


@dataclass(frozen=True, slots=True)
class HandoffNote:
    """What the agent reads first, so the customer never repeats themselves."""

    reason: Reason
    detail: str
    summary: str
    language: str  # the customer's language code ("de"), "" when unknown
    sentiment_trend: Sequence[str]  # labels of the customer's recent messages, oldest first
    unanswered: Sequence[str]  # questions the bot could not answer
    sources: Sequence[str]  # what the bot cited so far

    def render(self) -> str:
        """Plain text, safe to post as a help desk's private note."""
        lines = [f"Handoff: {self.reason.value}" + (f" ({self.detail})" if self.detail else "")]
        if self.language:
            lines.append(f"Customer's language: {self.language}")
        if self.sentiment_trend:
            lines.append("Sentiment: " + " -> ".join(self.sentiment_trend))
        if self.summary:
            lines += ["", "Summary:", self.summary]
        if self.unanswered:
            lines += ["", "Not answered by the bot:", *(f"- {q}" for q in self.unanswered)]
        if self.sources:
            lines += ["", "Sources cited:", *(f"- {s}" for s in self.sources)]
        return "\n".join(lines)


class EventKind(enum.StrEnum):
    REQUESTED = "handoff.requested"  # bot -> waiting (note attached)
    TAKEN = "handoff.taken"  # -> human
    RETURNED = "handoff.returned"  # -> bot
    CUSTOMER_MESSAGE = "message.customer"  # while waiting/human: for the agent
    AGENT_MESSAGE = "message.agent"  # an agent's reply, as delivered to the customer


@dataclass(frozen=True, slots=True)
class DeskEvent:
    kind: EventKind
    key: ConversationKey
    conversation_id: int
    state: HandoffState
    at: datetime
    reason: Reason | None = None
    note: HandoffNote | None = None
    # message events: the text as written, its translation for the other side ("" when none
    # was needed or no model could make one), the language it was written in, the agent
    message_id: int = 0
    text: str = ""
    translation: str = ""
    language: str = ""
    agent: str = ""
    extras: dict[str, str] = field(default_factory=dict)


class DeskBridge(Protocol):
    """Where agents work. `platforms`: the conversation platforms it serves (None: all)."""

    platforms: frozenset[str] | None

    async def publish(self, event: DeskEvent) -> None:
        """Hand one event on. Raising leaves it for a retry; it may be called again with the
        same event (receivers dedupe on kind + conversation + message_id/at)."""
        ...


class Desk(Protocol):
    """The core's handoff service (bot/handoff/desk.py), used by triggers, bridges and the
    agent API."""

    async def status(self, key: ConversationKey) -> HandoffStatus: ...

    async def request(
        self, key: ConversationKey, reason: Reason, detail: str = ""
    ) -> HandoffStatus: ...

    async def take(self, key: ConversationKey, agent: str) -> HandoffStatus: ...

    async def give_back(self, key: ConversationKey, agent: str) -> HandoffStatus: ...

    async def agent_message(
        self, key: ConversationKey, text: str, *, agent: str, idempotency_key: str
    ) -> int:
        """Record an agent's reply (a repeat of the key returns the first one's id) and get it
        delivered to the customer. Raises HandoffError when no human has the conversation."""
        ...

    def attach(self, bridge: DeskBridge) -> None: ...
