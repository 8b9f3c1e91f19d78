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
import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from backends.control_tokens import neutralise
from bot.errors import BotError
from bot.text.storable import LINE_BREAKS, one_line
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

    def render(self, *, markdown: bool = False) -> str:
        """Plain text, safe to post as a help desk's private note: every item one line (see
        `clean_line`), so no text from a customer can start a line of its own. `markdown`:
        for a desk that renders notes as Markdown (Chatwoot), each line's text is escaped so
        an image or link in it shows as text; the note's own bullets stay bullets."""
        show = escape_markdown if markdown else _same
        lines = [f"Handoff: {self.reason.value}"]  # Parley's own words stay as they are
        if self.detail:
            lines[0] += f" ({show(clean_line(self.detail))})"
        if self.language:
            lines.append(f"Customer's language: {show(clean_line(self.language))}")
        if self.sentiment_trend:
            trend = " -> ".join(map(clean_line, self.sentiment_trend))
            lines.append(f"Sentiment: {show(trend)}")
        if self.summary:
            lines += ["", "Summary:", *(_item(line, show) for line in _summary(self))]
        if self.unanswered:
            lines += ["", "Not answered by the bot:", *(_item(q, show) for q in self.unanswered)]
        if self.sources:
            lines += ["", "Sources cited:", *(_item(s, show) for s in self.sources)]
        return "\n".join(lines)


# Joiners that real scripts and emoji need (ZWNJ in Persian, ZWJ in emoji and neutralise()).
_KEPT_FORMAT = frozenset("\u200c\u200d")
# Any ASCII punctuation may be backslash-escaped in CommonMark; escaped, none starts markup.
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
LINE_CHARS = 500  # longest quoted item in a note; the agent has the whole conversation


def clean_line(text: str, limit: int = LINE_CHARS) -> str:
    """`text` as one line an agent can trust: line breaks and runs of spaces collapsed,
    invisible controls removed (bidi overrides, zero-width spaces, tag characters, C0/C1
    controls), chat-template control tokens neutralised, at most `limit` characters."""
    flat = one_line(text)  # a customer's newline must not start a line of the note
    visible = "".join(
        c for c in flat if c in _KEPT_FORMAT or unicodedata.category(c) not in ("Cc", "Cf", "Cs")
    )
    line = neutralise(" ".join(visible.split()))
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "\u2026"


def escape_markdown(line: str) -> str:
    """`line` as literal text in CommonMark (Chatwoot's markdown-it): every ASCII punctuation
    character backslash-escaped, so `![x](url)`, `[a](b)`, `<...>`, `*`, `#` show as typed."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", line)


def _same(line: str) -> str:
    return line


def _summary(note: HandoffNote) -> list[str]:
    """The summary's lines, each made one clean line; the note writer's bullets ("- ") are
    the note's own, everything after them is text."""
    lines = (line.strip() for line in LINE_BREAKS.split(note.summary))
    return [line[2:] if line.startswith("- ") else line for line in lines if line]


def _item(text: str, show: Callable[[str], str]) -> str:
    return "- " + show(clean_line(text, 2 * LINE_CHARS))


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


class DeskAway(Exception):
    """Raised by a bridge whose help desk surely did not get the event: out of reach, or it
    asked to be called later (429, 503). The desk keeps the event and tries again for as long
    as it takes, the bridge's later events waiting behind it."""


class DeskBridge(Protocol):
    """Where agents work. `platforms`: the conversation platforms it serves (None: all)."""

    platforms: frozenset[str] | None

    async def publish(self, event: DeskEvent) -> Awaitable[bool] | None:
        """Hand one event on. Raising leaves it for a retry (DeskAway: until the desk is
        back; anything else: a few tries); it may be called again with the same event
        (receivers dedupe on kind + conversation + message_id/at). None: the help desk took
        it. A bridge that delivers later, from queues of its own (the webhooks), returns a
        receipt instead: True once the help desk took the event, False when it was given
        up or left undelivered at stop (a handoff request is then sent again at the next
        start)."""
        ...


def reaches(bridge: DeskBridge, key: ConversationKey) -> bool:
    """Whether `bridge` puts this conversation before an agent: it serves the platform, and
    where it has a `reaches(key)` method (a webhook bridge with per-site receivers), that
    says so."""
    if bridge.platforms is not None and key.platform not in bridge.platforms:
        return False
    check = getattr(bridge, "reaches", None)
    return bool(check(key)) if callable(check) else True


class Desk(Protocol):
    """The core's handoff service (bot/handoff/desk.py), used by triggers, bridges and the
    agent API."""

    async def status(self, key: ConversationKey) -> HandoffStatus: ...

    async def request(
        self, key: ConversationKey, reason: Reason, detail: str = ""
    ) -> HandoffStatus: ...

    # `updated_at`: the time of the help desk's update that asks for it, checked and recorded
    # as newer_update does, in the change's own transaction: not done when a newer one was
    # recorded (an older update delivered late, or two handled at once). None: Parley's own
    # change, recorded at this clock's time (a help desk's older update, delivered late, is
    # then ignored), or at `made_at` (Unix seconds, the help desk's clock): the time of the
    # help desk's message that asks for it (an agent's answer), delivered maybe late.
    async def take(
        self,
        key: ConversationKey,
        agent: str,
        *,
        updated_at: float | None = None,
        made_at: float | None = None,
    ) -> HandoffStatus: ...

    # A give-back comes after the agent's replies recorded before it, and may wait for their
    # delivery (up to delivery_grace_s plus lock_ttl_s). `answer_within_s`: a caller that must
    # answer sooner (a help desk's webhook, whose sender gives up) gets the conversation's
    # status after at most that long; the give-back is then applied by the desk once the
    # replies are delivered (or given up), whatever becomes of the caller.
    async def give_back(
        self,
        key: ConversationKey,
        agent: str,
        *,
        updated_at: float | None = None,
        made_at: float | None = None,
        answer_within_s: float | None = None,
    ) -> HandoffStatus: ...

    async def newer_update(self, key: ConversationKey, updated_at: float) -> bool:
        """Whether a help desk's update of the conversation made at `updated_at` (Unix seconds,
        the help desk's clock) is no older than the newest one applied: True records it, to
        be applied (one stamped over a minute ahead of Parley's clock is applied without being
        recorded: a wrong clock must not hold back every later update); False: a newer one
        was, ignore it. HandoffError: no such conversation. For an update that changes
        nothing: one that does passes its time to take or give_back instead."""
        ...

    async def agent_message(
        self,
        key: ConversationKey,
        text: str,
        *,
        agent: str,
        idempotency_key: str,
        made_at: float | None = None,
    ) -> int:
        """Record an agent's reply (a repeat of the key returns the first one's id, whatever
        the state is now) and get it delivered to the customer. Raises HandoffError when no
        human has the conversation. Taking it from the queue, at `made_at` (take's)."""
        ...

    def attach(self, bridge: DeskBridge) -> None: ...
