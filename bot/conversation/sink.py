"""The seam between the core and a platform's output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from bot.types import ConversationKey, Incoming


class ReplySink(Protocol):
    """Delivers one reply to a conversation, rendering it as the deltas arrive.

    The sink consumes `chunks` to the end (or raises). Stopping early closes the iterator,
    which aborts the model request behind it. `reply_to` is the platform's id of the message
    answered ("" if none): a sink may thread the reply to it.
    """

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None: ...


class Platform(ReplySink, Protocol):
    """A sink that can also say whether the platform counts a sender as an admin where the
    message was sent (a Telegram group's administrators, a Discord member with Manage
    Server). The core asks only for admin-only commands in group conversations."""

    async def is_admin(self, incoming: Incoming) -> bool: ...


async def once(text: str) -> AsyncIterator[str]:
    """A reply that is complete from the start (commands, errors, no-model answers)."""
    yield text
