"""Platform-neutral value types that travel through the core.

Adapters translate platform events into `Incoming` and reply streams back into platform calls;
nothing in `bot/` ever sees a platform SDK object. Platform leftovers ride in `extras`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType


def _no_extras() -> Mapping[str, object]:
    return MappingProxyType({})


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """`moment` with its offset, in UTC: SQLite keeps no offset and hands back naive values,
    which were written in UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Identifies one conversation: a chat on a platform, optionally a thread inside it."""

    platform: str
    chat_id: str
    thread_id: str = ""

    def __str__(self) -> str:
        tail = f"/{self.thread_id}" if self.thread_id else ""
        return f"{self.platform}:{self.chat_id}{tail}"


@dataclass(frozen=True, slots=True)
class User:
    platform: str
    user_id: str
    display_name: str = ""
    # The language the platform reports for the user (IETF tag such as "de" or "pt-br"; "" if
    # unknown). Error sentences and notices use it when the user has set no /lang.
    language: str = ""
    # The sender's roles where the platform has them (Discord role ids); access rules use them.
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Incoming:
    """One inbound message, as the core sees it.

    `idempotency_key` is unique per platform delivery (Telegram's chat and message ids, Discord's
    message id, ...): a second delivery with the same key is recorded once and answered once.
    """

    key: ConversationKey
    user: User
    text: str
    idempotency_key: str
    sent_at: datetime = field(default_factory=utcnow)
    reply_to_text: str | None = None
    # The platform's id of this message: the reply is threaded to it where that helps (groups).
    platform_message_id: str = ""
    # A conversation several people share (a group, a server channel): changing what the
    # whole chat gets is for its admins there.
    group: bool = False
    # The places around the chat, innermost first (a thread's channel, category, server):
    # access rules on any of them apply to the chat.
    scopes: tuple[str, ...] = ()
    extras: Mapping[str, object] = field(default_factory=_no_extras)


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str

    def as_openai(self) -> dict[str, str]:
        return {"role": self.role.value, "content": self.content}


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished answer to one turn."""

    key: ConversationKey
    text: str
    in_reply_to: tuple[str, ...]
    truncated: bool = False
    extras: Mapping[str, object] = field(default_factory=_no_extras)
