"""Discord messages -> what the adapter does with them (pure: no I/O, no API calls).

direct message, text              -> Submit (every message is for the bot)
server channel, mentions the bot  -> Submit (the mention stripped)
server channel, replies to ours   -> Submit
a thread the bot opened           -> Submit (every message: the bot was asked there)
server channel, anything else     -> Observe: kept only where the chat opted in (/keep on)
a text/Markdown/HTML/PDF file     -> Fetch (the core checks it, then the adapter downloads it)
image, audio, video               -> Notice (one sentence on what the bot can read)
a forward (Discord's "Forward")   -> as the message it carries (its text, files, stickers)
from a bot (ourselves included),
a system message (pins, joins)    -> Ignore
edited (edit_of)                  -> Edit of its text; with a document, of its question
                                     (the document's text stays)

A thread (or forum post) is a conversation of its own: its key is the thread's id, and its
scopes are the parent channel, the category and the server, so access rules on any of them
apply. Who may talk to the bot is the core's decision (`[discord.access]`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import discord

from adapters.kit.actions import Edit, Ignore, Notice, Observe, Submit, as_edit
from bot import phrases
from bot.types import ConversationKey, Incoming, User

PLATFORM = "discord"
# Media the core cannot read: one sentence instead of a download.
_MEDIA_PREFIXES = ("image/", "audio/", "video/")
# Message types a person writes; the rest are system notices (pins, joins, boosts).
THREAD_NAME_MAX = 100
_SPOKEN = frozenset({discord.MessageType.default, discord.MessageType.reply})


@dataclass(frozen=True, slots=True)
class Fetch:
    """A document to download (`attachment.read()`) and read; `incoming.text` is the request.
    `skipped`: the names of the message's other documents, which are not read (one document
    per message, as on Telegram): the sender is told."""

    incoming: Incoming
    attachment: discord.Attachment
    skipped: tuple[str, ...] = ()


Action = Submit | Observe | Fetch | Notice | Ignore


Author = discord.User | discord.Member


def translate(message: discord.Message, me: int, *, author: Author | None = None) -> Action:
    """What to do with `message`, for the bot whose user id is `me`. `author`: the sender as
    a member of the server, where the message came without it (read back from a channel's
    log: Discord's REST messages leave the member out)."""
    if message.author.bot or message.author.id == me:
        return Ignore("not from a person")
    if message.type not in _SPOKEN:
        return Ignore("system message")
    text = addressed_text(message, me)
    if text is None:
        if not content_of(message).strip():
            return Ignore("server message not for the bot")
        return Observe(to_incoming(message, content_of(message), author))
    return _for_content(message, text, author)


def _forwarded(message: discord.Message) -> discord.MessageSnapshot | None:
    """The message a forward carries (Discord's "Forward": a message of no text, attachment
    or sticker of its own, the original in its snapshot); None for any other message."""
    if message.content or message.attachments or message.stickers:
        return None
    return message.message_snapshots[0] if message.message_snapshots else None


def content_of(message: discord.Message) -> str:
    """The message's text; a forward's is the text of the message it carries."""
    forwarded = _forwarded(message)
    return forwarded.content if forwarded is not None else message.content


def _attachments(message: discord.Message) -> list[discord.Attachment]:
    forwarded = _forwarded(message)
    return forwarded.attachments if forwarded is not None else message.attachments


def _stickers(message: discord.Message) -> list[discord.StickerItem]:
    forwarded = _forwarded(message)
    return forwarded.stickers if forwarded is not None else message.stickers


def edit_of(message: discord.Message, me: int) -> Edit | Ignore:
    """An edited message: its new text, or where it carries a document, the new question
    about the document (`Edit.document`: the document's text stays with the message as it was
    recorded), whether or not it still addresses the bot."""
    action = translate(message, me)
    documents = _documents(message)
    if documents and isinstance(action, Fetch | Observe):
        observed = isinstance(action, Observe)
        name = documents[0].filename
        return Edit(action.incoming, observed=observed, edited_at=message.edited_at, document=name)
    return as_edit(action, message.edited_at)


def _documents(message: discord.Message) -> list[discord.Attachment]:
    return [
        attachment
        for attachment in _attachments(message)
        if not (attachment.content_type or "").startswith(_MEDIA_PREFIXES)
    ]


def _for_content(message: discord.Message, text: str, author: Author | None) -> Action:
    incoming = to_incoming(message, text, author)
    documents = _documents(message)
    if documents:
        return Fetch(incoming, documents[0], tuple(d.filename for d in documents[1:]))
    if _attachments(message):
        return Notice(incoming, phrases.MEDIA)
    if not text.strip():
        # A sticker alone is told what the bot reads (it was ignored, unanswered); with text
        # it is decoration, and the text is the message.
        return Notice(incoming, phrases.MEDIA) if _stickers(message) else Ignore("empty message")
    return Submit(incoming)


def addressed_text(message: discord.Message, me: int) -> str | None:
    """The text with our mention removed, or None when a server message is not for us."""
    if message.guild is None:
        return content_of(message)
    channel = message.channel
    if isinstance(channel, discord.Thread) and channel.owner_id == me:  # an auto_thread
        return strip_mention(content_of(message), me)
    # The bot's own role (managed, tagged with its id) is a mention of the bot too: users
    # pick "@Parley" from the mention list and may get the role (a helper's review).
    roles = [r.id for r in message.role_mentions if r.tags is not None and r.tags.bot_id == me]
    mentioned = roles or any(user.id == me for user in message.mentions)
    if not mentioned and not _replies_to(message, me):
        return None
    return strip_mention(message.content, me, roles)


def thread_name(text: str) -> str:
    """A thread named after the question: its first line, within Discord's 100 characters."""
    line = (text.strip().splitlines() or ["?"])[0]
    return line if len(line) <= THREAD_NAME_MAX else line[: THREAD_NAME_MAX - 1] + "…"


def strip_mention(text: str, me: int, roles: Sequence[int] = ()) -> str:
    """The text without the bot's mention, or its own role's (`roles`)."""
    for role in roles:
        text = text.replace(f"<@&{role}>", "")
    return re.sub(rf"<@!?{me}>", "", text).strip()


def _replies_to(message: discord.Message, me: int) -> bool:
    reference = message.reference
    if reference is None:
        return False
    replied = reference.resolved or reference.cached_message
    return isinstance(replied, discord.Message) and replied.author.id == me


def message_key(message_id: int) -> str:
    """A message's idempotency key: its Discord id, the same however it arrives (the
    gateway, a replay, a backfill's read)."""
    return f"discord:{message_id}"


def to_incoming(message: discord.Message, text: str, author: Author | None = None) -> Incoming:
    author = author or message.author
    roles: tuple[str, ...] = ()
    extras: dict[str, object] = {}
    if isinstance(author, discord.Member):
        # Every member has the @everyone role (its id is the guild's): not a role to allow.
        roles = tuple(str(r.id) for r in author.roles if not r.is_default())
        # Admin of the server for admin-only commands: as of this message, no extra call.
        extras["manage_guild"] = author.guild_permissions.manage_guild
    return Incoming(
        key=ConversationKey(PLATFORM, str(message.channel.id)),
        user=User(PLATFORM, str(author.id), author.display_name, roles=roles),
        text=text,
        idempotency_key=message_key(message.id),
        sent_at=message.created_at,
        reply_to_text=_replied_text(message),
        platform_message_id=str(message.id),
        group=message.guild is not None,
        scopes=scopes_of(message.channel),
        extras=extras,
    )


def scopes_of(channel: object) -> tuple[str, ...]:
    """The places around a channel, innermost first: parent channel, category, server."""
    places: list[int | None] = []
    if isinstance(channel, discord.Thread):
        places += [channel.parent_id, channel.category_id, channel.guild.id]
    elif isinstance(channel, discord.abc.GuildChannel):
        places += [channel.category_id, channel.guild.id]
    return tuple(str(p) for p in places if p is not None)


def _replied_text(message: discord.Message) -> str | None:
    reference = message.reference
    replied = reference.resolved if reference is not None else None
    return replied.content if isinstance(replied, discord.Message) else None


def command_incoming(interaction: discord.Interaction, name: str, text: str) -> Incoming:
    """A slash command as the message it stands for: "/name text"."""
    user = interaction.user
    roles: tuple[str, ...] = ()
    extras: dict[str, object] = {}
    if isinstance(user, discord.Member):
        roles = tuple(str(r.id) for r in user.roles if not r.is_default())
        extras["manage_guild"] = interaction.permissions.manage_guild
    return Incoming(
        key=ConversationKey(PLATFORM, str(interaction.channel_id)),
        # Discord sends the user's client language with every interaction.
        user=User(PLATFORM, str(user.id), user.display_name, str(interaction.locale), roles),
        text=f"/{name} {text}".strip(),
        idempotency_key=f"discord:interaction:{interaction.id}",
        sent_at=interaction.created_at,
        platform_message_id=str(interaction.id),
        group=interaction.guild_id is not None,
        scopes=scopes_of(interaction.channel),
        extras=extras,
    )


def menu_incoming(
    interaction: discord.Interaction, command: str, target: discord.Message, context: str
) -> Incoming:
    """A message context-menu command as the command it stands for, about `context` (the
    target message's text, or the conversation from it on): "/command", in reply to it."""
    incoming = command_incoming(interaction, command, "")
    return dataclasses.replace(incoming, reply_to_text=context or content_of(target))
