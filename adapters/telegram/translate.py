"""Telegram updates -> what the adapter does with them (pure: no I/O, no SDK calls).

private chat, text            -> Submit (every message is for the bot)
group, /cmd or /cmd@ourbot    -> Submit (our name stripped); /cmd@otherbot -> Ignore
group, @ourbot mention        -> Submit (the mention stripped)
group, reply to our message   -> Submit
group, anything else (text)   -> Observe: the manager keeps it only if the group opted in
                                 (/keep on), for "what did I miss"; nothing else happens
document for the bot          -> Fetch (the core checks it, then the adapter downloads it)
photo, voice, sticker, ...    -> Notice (one sentence on what the bot can read)
edited message                -> Edit: its new text replaces the recorded one (a pending
                                 message is answered once, with it); never answered again,
                                 which would put a second answer under one question. A
                                 document for the bot: Refetch (read again: the edit may
                                 have replaced the file), a group's document not for the
                                 bot: Edit of its caption. Media, a bot's message: Ignore
channel post                  -> Ignore: Parley converses, it does not post in channels
                                 (a post a linked channel forwards to its discussion group
                                 is chatter there, even when it mentions the bot)
group upgraded to supergroup  -> Moved (migrate_to_chat_id in the old group,
                                 migrate_from_chat_id in the new one: either moves the
                                 conversation, the second finds nothing left to move)
callback query                -> AnswerCallback (stops the button's spinner; Parley sends
                                 no buttons, so an old or foreign one is acknowledged only)

Who may talk to the bot is the core's decision (bot.policy, `[telegram.access]`): this module
only says who sent what, where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from telegram import Chat, Message, MessageEntity, Update

from adapters.kit.actions import Edit, Ignore, Notice, Observe, Submit, as_edit
from bot import phrases
from bot.types import ConversationKey, Incoming, User

PLATFORM = "telegram"
_COMMAND = re.compile(r"^/([A-Za-z][A-Za-z0-9_]{0,31})(?:@([A-Za-z0-9_]+))?(?=\s|$)(.*)$", re.S)


@dataclass(frozen=True, slots=True)
class BotIdentity:
    id: int
    username: str


@dataclass(frozen=True, slots=True)
class Fetch:
    """A document to download and read; `incoming.text` is the request (caption or default)."""

    incoming: Incoming
    file_id: str
    file_name: str
    mime_type: str
    size: int


@dataclass(frozen=True, slots=True)
class Refetch:
    """A document's message edited: Telegram sends the same edited_message for a new caption
    and for a new file (another `file_unique_id`), and which file the message was recorded
    with is not kept, so the document is read again; its text and the caption replace the
    message's (Intake.edit_document)."""

    fetch: Fetch
    edited_at: datetime | None


@dataclass(frozen=True, slots=True)
class AnswerCallback:
    query_id: str


@dataclass(frozen=True, slots=True)
class Moved:
    """A group became a supergroup: a new chat id, for the same members and talk."""

    old_chat_id: int
    new_chat_id: int


Action = Submit | Observe | Fetch | Refetch | Notice | AnswerCallback | Moved | Edit | Ignore


def translate(update: Update, me: BotIdentity) -> Action:
    if update.callback_query is not None:
        return AnswerCallback(update.callback_query.id)
    if update.channel_post is not None or update.edited_channel_post is not None:
        return Ignore("channel post")
    if update.edited_message is not None:
        return _edit(update.edited_message, me)
    if update.message is None:
        return Ignore("update type not handled")
    message = update.message
    if message.migrate_to_chat_id is not None:
        return Moved(message.chat.id, message.migrate_to_chat_id)
    if message.migrate_from_chat_id is not None:
        return Moved(message.migrate_from_chat_id, message.chat.id)
    return _for_message(message, me)


def _edit(message: Message, me: BotIdentity) -> Action:
    """An edited message: its new text; a document for the bot read again (Refetch: the file
    may be another); a document's new caption where it no longer addresses the bot, the
    question about the document (`Edit.document`: the text recorded with it stays)."""
    action = _for_message(message, me)
    if isinstance(action, Fetch):
        return Refetch(action, message.edit_date)
    doc = message.document
    if doc is not None and isinstance(action, Observe):
        name = doc.file_name or "document"
        observed = isinstance(action, Observe)
        return Edit(action.incoming, observed=observed, edited_at=message.edit_date, document=name)
    return as_edit(action, message.edit_date)


def _for_message(message: Message, me: BotIdentity) -> Action:
    if message.from_user is None or message.from_user.is_bot:
        return Ignore("not from a person")
    text = addressed_text(message, me)
    if text is None or message.is_automatic_forward:
        # A linked channel's post, copied into its discussion group, is never for the bot
        # (a channel post), though kept like other chatter where the group keeps it.
        return _observed(message)
    return _for_content(message, text)


def _observed(message: Message) -> Action:
    text = message.text or message.caption or ""
    if not text.strip() or _COMMAND.match(text):  # media, or a command for another bot
        return Ignore("group message not for the bot")
    return Observe(to_incoming(message, text))


def _for_content(message: Message, text: str) -> Action:
    incoming = to_incoming(message, text)
    doc = message.document
    if doc is not None:
        name = doc.file_name or "document"
        mime = doc.mime_type or ""
        return Fetch(incoming, doc.file_id, name, mime, doc.file_size or 0)
    if message.effective_attachment is None:
        # A bare "@bot" (nothing left once the mention is taken out) says nothing to answer.
        return Submit(incoming) if text.strip() else Ignore("empty message")
    return Notice(incoming, phrases.MEDIA)


def addressed_text(message: Message, me: BotIdentity) -> str | None:
    """The message's text with our name removed, or None when a group message is not ours."""
    text = message.text or message.caption or ""
    command = _COMMAND.match(text)
    if command is not None:
        name, target, rest = command.groups()
        if target is not None and target.lower() != me.username.lower():
            return None  # /cmd@otherbot
        return f"/{name}{rest}"
    if message.chat.type == Chat.PRIVATE:
        return text
    if _mentions(message, me):
        return re.sub(rf"@{re.escape(me.username)}\b", "", text, flags=re.I).strip()
    replied = message.reply_to_message
    if replied is not None and replied.from_user is not None and replied.from_user.id == me.id:
        return text
    return None


def _mentions(message: Message, me: BotIdentity) -> bool:
    kinds: list[str | None] = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION]
    found = {**message.parse_entities(kinds), **message.parse_caption_entities(kinds)}
    for entity, shown in found.items():
        if entity.type == MessageEntity.MENTION and shown.lower() == f"@{me.username.lower()}":
            return True
        if entity.user is not None and entity.user.id == me.id:
            return True
    return False


def to_incoming(message: Message, text: str) -> Incoming:
    person = message.from_user
    replied = message.reply_to_message
    thread = _thread(message)
    return Incoming(
        key=ConversationKey(PLATFORM, str(message.chat.id), str(thread or "")),
        user=(
            User(PLATFORM, str(person.id), person.full_name, person.language_code or "")
            if person
            else User(PLATFORM, "")
        ),
        text=text,
        # Not the update_id: the Bot API picks it at random after a week without updates, so
        # an old one comes back; a message's id is unique within its chat for good.
        idempotency_key=f"{PLATFORM}:{message.chat.id}:{message.message_id}",
        sent_at=message.date,
        reply_to_text=(replied.text or replied.caption) if replied is not None else None,
        platform_message_id=str(message.message_id),
        group=message.chat.type != Chat.PRIVATE,
        extras={
            "message_id": message.message_id,
            "chat_type": message.chat.type,
            "language_code": person.language_code if person else None,
        },
    )


def _thread(message: Message) -> int | None:
    # Only forum topics are separate conversations; in other groups a thread id just marks
    # a reply chain, which stays part of the group's one conversation.
    return message.message_thread_id if message.is_topic_message else None
