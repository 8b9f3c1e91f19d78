"""What an adapter does with a platform event, as its pure translate function decides it.
Every platform has these; each adds its own (a Fetch that knows how to download a document,
Telegram's AnswerCallback) and forms its own `Action` union."""

from __future__ import annotations

from dataclasses import dataclass

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
