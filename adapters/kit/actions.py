"""What an adapter does with a platform event, as its pure translate function decides it.
Every platform has these; each adds its own (a Fetch that knows how to download a document,
Telegram's AnswerCallback) and forms its own `Action` union."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.types import Incoming


@dataclass(frozen=True, slots=True)
class Submit:
    """A message for the bot."""

    incoming: Incoming


@dataclass(frozen=True, slots=True)
class Observe:
    """A group message not for the bot: kept where the chat opted in, never answered."""

    incoming: Incoming


@dataclass(frozen=True, slots=True)
class Notice:
    """A sentence for the sender (a bot.phrases key), said through the core's rate-limited
    notices."""

    incoming: Incoming
    sentence: str


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Edit:
    """A message its sender edited: `incoming` carries the new text under the original's
    key, which replaces the recorded text (bot.conversation: Intake.edit). Never answered
    again. `observed`: the message is not for the bot (a group's chatter, kept where the
    chat opted in). `edited_at`: when, by the platform's clock (an older edit handled after
    a newer one changes nothing). `document`: the name of the document the message carries,
    whose caption (`incoming.text`) is its question: the question changes, the document's
    text stays."""

    incoming: Incoming
    observed: bool = False
    edited_at: datetime | None = None
    document: str = ""


def as_edit(action: object, edited_at: datetime | None = None) -> Edit | Ignore:
    """What an edit is, from the action its message's new content translates to: a text for
    the bot or a group's chatter replaces the recorded text; anything else (a document's
    caption, a notice for media, a message from a bot) is ignored. `edited_at`: the
    platform's time of the edit."""
    if isinstance(action, Submit):
        return Edit(action.incoming, edited_at=edited_at)
    if isinstance(action, Observe):
        return Edit(action.incoming, observed=True, edited_at=edited_at)
    return Ignore("edit of a message that is not a text")
