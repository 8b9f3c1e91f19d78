"""Shows one streamed answer in one Telegram chat: the Telegram side of the kit's `Streamer`.

Pacing, splitting and "latest text wins" are the kit's (`adapters.kit.streamer`); this module
renders each piece as Telegram HTML (`formatting`) and makes the Bot API calls. In a private
chat the growing answer is a draft (`sendMessageDraft`) and each finished piece is sent with
`sendMessage`; elsewhere a message is sent and then edited. Only the answer's first message
quotes the message it answers. Messages and edits go without link previews unless
`[telegram] link_previews` is on (NO_PREVIEW below); sendMessageDraft takes no such option.

When Telegram refuses the HTML of a piece (a parse error, "message text is empty", too long
after parsing, ENTITIES_TOO_LONG: entities too big in all, as many long links make them) the
same piece is sent again as plain text, so a rendering mistake costs formatting, never the
answer. A piece refused as ENTITIES_TOO_LONG stays plain text for the rest of its streaming
(each later edit, or draft, of it is sent plain at once, not tried as HTML again): more text
only adds entities. Past 100 entities Telegram takes a message and leaves the rest
unformatted: not a refusal. Any other refusal is an `AdapterError` for the streamer, which
stops showing (and keeps reading) the answer; a Bot API that does not answer is
`PlatformAway`, and the adapter's turn waits for it (`TelegramAdapter.deliver`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from telegram import Bot, LinkPreviewOptions, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, ChatMigrated, NetworkError, TelegramError

from adapters.kit.streamer import Pacing, Streamer
from bot.errors import AdapterError, MessageGone, PlatformAway

from .formatting import quiet_mentions, to_html, to_text
from .limits import unreachable
from .split import MAX_MESSAGE, utf16_len

log = logging.getLogger(__name__)

# Telegram allows about 20 messages a minute in a group; pacing edits to match keeps a long
# answer's updates even instead of bursting and then stalling.
GROUP_INTERVAL_S = 3.0
# "Bad Request: ENTITIES_TOO_LONG" (PTB: "Entities_too_long"): entities too big in all (a
# tdlib maintainer: about 9,500 characters of links' Markdown, telegram-bot-api #165), not
# too many: past 100 Telegram takes the message and ignores the rest's formatting (TelegramBots
# #854, telegram-bot-api #739). As typed, the links keep their URLs. The one refusal that more
# of the same piece only makes worse (a piece that grows keeps its entities and adds more): a
# piece refused so goes plain from then on (TelegramSurface._plain_refs, _plain_draft).
_ENTITIES_TOO_LONG = "entities_too_long"
# Bot API descriptions that blame the text itself: the plain text will do.
_TEXT_REFUSED = (
    "can't parse entities",
    "can't find end",
    "message text is empty",
    "text must be non-empty",
    "message is too long",
    _ENTITIES_TOO_LONG,
)
# The Bot API's answer to an edit of a message deleted in the chat (Telegram sends bots no
# event when a message is deleted: an edit is where the bot learns it).
_DELETED = "message to edit not found"

# What Telegram takes for no text at all, refused as HTML and as plain text alike ("message
# text is empty"): what tdlib's clean_input_string removes or makes a space (control
# characters; U+2028-U+202E: line and paragraph separators, the direction embeddings and
# overrides; three combining marks), then what its strip_empty_characters drops: whitespace
# and the spaces it lists, zero-width characters, direction marks, the byte order mark, the
# Braille blank, the object replacement character and Unicode's tag characters. An answer's
# first update is often its first token alone: a right-to-left mark (or embedding) before
# Hebrew or Arabic was refused, and the refusal ended the showing of the whole answer.
_NOTHING = re.compile(
    "[\\s\x00-\x08\x0e-\x1b\u030a\u0333\u033f\u180e\u200b-\u200f\u2028-\u202e"
    "\u2800\ufeff\ufffc\U000e0000-\U000e007f]*"
)

# Model output is shown without link previews: Telegram's servers fetch a previewed link as
# soon as the message arrives, so a link that a prompt injection had the model write (with
# a secret from the context in its query) would be requested with no one clicking it.
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

T = TypeVar("T")
Call = Callable[[str, str | None], Awaitable[T]]  # (text, parse mode) -> Bot API result


@dataclass(frozen=True, slots=True)
class Target:
    chat_id: int
    thread_id: int | None
    quote: ReplyParameters | None = None  # the first message of the answer replies to it

    @property
    def private(self) -> bool:
        return self.chat_id > 0  # users' ids are positive, groups' and channels' negative


class TelegramSurface:
    """One chat, for the kit's streamer: pieces of Markdown in, Bot API calls out."""

    def __init__(self, bot: Bot, target: Target, *, link_previews: bool = False) -> None:
        self._bot = bot
        self._target = target
        self._previews = None if link_previews else NO_PREVIEW
        self._draft_id = secrets.randbelow(2**31 - 2) + 1
        self._sent_any = False
        self._chat = target.chat_id  # a new id once the group becomes a supergroup
        self._chat_of: dict[int, int] = {}  # message id -> the chat it is in
        self._moved: dict[int, int] = {}  # a message of the old group -> its successor
        self._last_render = ("", "")  # the streamer asks `shows` and then sends the same piece
        self._texts: dict[int, str] = {}  # message id -> the text last asked for
        # Messages whose HTML was refused as ENTITIES_TOO_LONG: edited as plain text from
        # then on. And the draft piece so refused: a later draft that grows it is plain too.
        self._plain_refs: set[int] = set()
        self._plain_draft: str | None = None

    def shows(self, piece: str) -> bool:
        return _NOTHING.fullmatch(to_text(self._html(piece))) is None

    def _html(self, piece: str) -> str:
        if self._last_render[0] != piece:
            self._last_render = (piece, to_html(piece))
        return self._last_render[1]

    async def send(self, piece: str, *, plain: bool) -> int:
        # The draft's piece, finished (or growing as a message, drafts refused): plain as it
        # was, and edited plain from then on.
        drafted = self._grows_plain_draft(piece)
        if drafted:
            plain, self._plain_draft = True, None
        with _platform(self._chat):
            try:
                message_id, long = await self._rendered_how(self._sending(), piece, plain)
            except ChatMigrated as exc:
                message_id, long = await self._rendered_how(self._moved_to(exc), piece, plain)
        if long or drafted:
            self._plain_refs.add(message_id)
        return self._sent(message_id, piece, plain or long)

    def _sending(self) -> Call[int]:
        t = self._target
        chat_id = self._chat
        # The first message quotes the question, in the chat the question was asked in.
        quote = None if self._sent_any or chat_id != t.chat_id else t.quote

        async def call(text: str, mode: str | None) -> int:
            sent = await self._bot.send_message(
                chat_id,
                text,
                parse_mode=mode,
                message_thread_id=t.thread_id,
                reply_parameters=quote,
                link_preview_options=self._previews,
            )
            return int(sent.message_id)

        return call

    def _moved_to(self, exc: ChatMigrated) -> Call[int]:
        """The group became a supergroup (an admin made it public, turned topics on): it has
        a new id, and Telegram refuses every call to the old one. The rest of the answer goes
        there, unquoted (the old group's message ids mean nothing in the supergroup)."""
        log.info("chat %s is now the supergroup %s", self._chat, exc.new_chat_id)
        self._chat = exc.new_chat_id
        return self._sending()

    def _sent(self, message_id: int, piece: str, plain: bool) -> int:
        self._sent_any = True
        self._chat_of[message_id] = self._chat
        self._texts[message_id] = self._text(piece, plain)
        return message_id

    async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
        ref = self._moved.get(ref, ref)
        chat_id = self._chat_of.get(ref, self._chat)
        plain = plain or ref in self._plain_refs
        if self._texts.get(ref) == self._text(piece, plain):
            return  # another piece with the same rendering: Telegram would say "not modified"

        async def call(text: str, mode: str | None) -> None:
            try:
                await self._bot.edit_message_text(
                    text, chat_id, ref, parse_mode=mode, link_preview_options=self._previews
                )
            except BadRequest as exc:
                if "not modified" not in str(exc).lower():  # the same text: nothing to do
                    raise

        with _platform(chat_id):
            try:
                _, long = await self._rendered_how(call, piece, plain)
            except ChatMigrated as exc:
                # The message stays in the old group, which can no longer be written to: the
                # piece goes on as a new message in the supergroup, edited from then on.
                moved, long = await self._rendered_how(self._moved_to(exc), piece, plain)
                if long or ref in self._plain_refs:  # the piece stays plain in its new message
                    self._plain_refs.add(moved)
                self._moved[ref] = self._sent(moved, piece, plain or long)
                return
        if long:
            self._plain_refs.add(ref)
        self._texts[ref] = self._text(piece, plain or long)

    async def draft(self, piece: str) -> None:
        t = self._target

        async def call(text: str, mode: str | None) -> None:
            await self._bot.send_message_draft(t.chat_id, self._draft_id, text, t.thread_id, mode)

        with _platform(t.chat_id):
            _, long = await self._rendered_how(call, piece, self._grows_plain_draft(piece))
        if long:
            self._plain_draft = piece

    def _grows_plain_draft(self, piece: str) -> bool:
        """Whether `piece` is the draft piece refused as ENTITIES_TOO_LONG, grown since."""
        return self._plain_draft is not None and piece.startswith(self._plain_draft)

    def _text(self, piece: str, plain: bool) -> str:
        return piece if plain else self._html(piece)

    async def _rendered_how(self, call: Call[T], piece: str, plain: bool) -> tuple[T, bool]:
        """The call's result, and whether its HTML was refused as ENTITIES_TOO_LONG (it went
        as plain text then, and the piece stays plain)."""
        long = False
        if not plain:
            try:
                return await call(self._html(piece), ParseMode.HTML), False
            except BadRequest as exc:
                refusal = str(exc).lower()
                if not any(reason in refusal for reason in _TEXT_REFUSED):
                    raise
                long = _ENTITIES_TOO_LONG in refusal
                log.info("chat %s: HTML refused (%s); plain text", self._target.chat_id, exc)
        return await call(quiet_mentions(piece), None), long


class ReplyStream:
    """The answer's stream for one chat: Telegram's pacing and limit for the kit's streamer."""

    def __init__(
        self,
        bot: Bot,
        target: Target,
        *,
        interval_s: float,
        drafts: bool,
        limit: int = MAX_MESSAGE,
        link_previews: bool = False,
    ) -> None:
        interval = interval_s if target.private else max(interval_s, GROUP_INTERVAL_S)
        surface = TelegramSurface(bot, target, link_previews=link_previews)
        self._streamer = Streamer(
            surface,
            Pacing(interval, limit, utf16_len),
            drafts=surface if drafts and target.private else None,
        )

    @property
    def updates(self) -> int:
        return self._streamer.updates

    async def play(self, chunks: AsyncIterator[str]) -> None:
        await self._streamer.play(chunks)


@contextlib.contextmanager
def _platform(chat_id: int) -> Iterator[None]:
    """Bot API failures as the streamer takes them: a Bot API that did not answer (no
    connection, a timeout, a 5xx, after the flood gate's retries) is PlatformAway; a refusal
    (400, 403 blocked, a flood ban) an AdapterError, MessageGone where the message being
    edited was deleted in the chat (an admin). PTB's BadRequest is a NetworkError too."""
    try:
        yield
    except BadRequest as exc:
        if _DELETED in str(exc).lower():
            raise MessageGone(f"chat {chat_id}: {exc}") from exc
        raise AdapterError(f"chat {chat_id}: {exc}") from exc
    except NetworkError as exc:
        raise PlatformAway(f"chat {chat_id}: {unreachable(exc)}") from exc
    except TelegramError as exc:
        raise AdapterError(f"chat {chat_id}: {exc}") from exc
