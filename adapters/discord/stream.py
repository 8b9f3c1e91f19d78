"""Shows one streamed answer in one Discord channel: the Discord side of the kit's `Streamer`.

Pacing, splitting at 2,000 characters and "latest text wins" are the kit's
(`adapters.kit.streamer`); this module sends the first message and edits it as the answer
grows, every call through the outbound gate (Discord: 5 sends or edits per 5 s per channel,
for every answer in that channel together). A 429 that still gets through is retried by
discord.py after its `retry_after`, so nothing is dropped.

A slash command's answer streams into its deferred response, and past 2,000 characters into
follow-up messages (the interaction's webhook, which needs no permission to post in the
channel), which its interaction token may send and edit for 15 minutes only: once the token
has (nearly) expired, the answer goes on in ordinary channel messages (what the token's
messages already show is not repeated). The worker the command came to writes them through
its `discord.Interaction`; another worker (the turn ran where the conversation's lease was,
or in an orphan sweep) through the application's webhook with the token the first kept in
the cache (`WebhookResponse`): the same calls, gate and rules.

"Parley is typing..." shows only when the first text takes longer than TYPING_GRACE_S: an
answer that shows at once needs no indicator, and a typing request costs one of the bot's 50
requests a second like any other (so it goes through the gate too).

Model output goes without embeds (the SUPPRESS_EMBEDS flag, set when a message is sent and
kept by Discord through every edit that does not name the flags), unless `[discord]
link_previews` is on: Discord's unfurler fetches a link as soon as a message shows it, so a
link that a prompt injection had the model write (a secret from the context in its query)
would be requested with no one clicking. A slash command's deferred response is the one
message discord.py (2.7) gives no public way to flag (neither `defer` nor
`edit_original_response` takes the flags Discord's API accepts there), and flagging it after
an edit is too late (the unfurler fetched as the text appeared). So, with embeds off, every
link outside code is also written the way Discord's own Markdown shows without an embed:
<https://example.com>, [text](<https://example.com>). In every message, not only that one:
one rule for the whole answer, measured by the one length the splitter uses (which piece
lands in the deferred response, a follow-up or a channel message is decided after the split),
and a second guard beside the flag. The brackets do not show.

A spoiler (`||hidden||`) hides only between both of its markers, so one left open at the end of
a message is closed there (`close_spoiler`): a streaming answer's edit before the model wrote
the closing marker, a piece of a split answer (the next piece opens it again: the splitter's
`reopen`). A marker the model never closed is no spoiler to Discord, which shows it as written:
the final messages show it so too (`settle_spoiler` escapes it), where it hid the rest while
the answer streamed. The markers added count towards the 2,000 characters (the one length the
splitter uses), and the recorded answer has none of them. `||` in code is no spoiler (Discord
shows it as written) and is left alone, in a code block or span still being written too.

Model output must never ping anyone: every call carries `AllowedMentions.none()` (only the
asker may be pinged, by the reply reference of the first message), and "@everyone"/"@here" get
a zero-width space so that even a client that ignores allowed mentions shows them as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar, cast

import aiohttp
import discord

from adapters.kit.gate import Gate
from adapters.kit.streamer import Pacing, Streamer
from bot.conversation.sink import still_showing
from bot.errors import AdapterError, MessageGone, PlatformAway

log = logging.getLogger(__name__)

MAX_MESSAGE = 2000  # characters of a message's content
# Code (closed fenced blocks and inline spans), where nothing renders as a mention or a link
# (nor is unfurled) and is left as written: a fence not (yet) closed is no code block to
# Discord, which shows "```" and the text after it as Markdown, links unfurled (a streaming
# answer's edit before its closing fence came), nor does a backtick after a backslash open
# one (it shows as a backtick), and an inline span closes with as many backticks as opened
# it, not followed by another, as in Discord's Markdown; or @everyone /
# @here standing as a word: not after a letter, digit or an address's punctuation, and not
# followed by a word character; or an http(s) link as Discord's Markdown finds one: already
# <in angle brackets>; a masked link's target, [text](https://...), which runs to the ")"
# that closes it (a "(...)" inside it is kept); any other, from its scheme to a space or "<",
# an unclosed "<" before it included.
_CODE_MENTION_OR_LINK = re.compile(
    r"((?<!\\)(?:```.*?```|(`+)(?:[^`\n]|[^`\n][^\n]*?[^`\n])\2(?!`)))|(?<![\w.@/+-])@(everyone|here)\b"
    r"|(?i:(<https?://[^\s<>]+>)|(?<=\]\()(https?://(?:\([^()\s]*\)|[^()\s<>\\])+)(?=\))"
    r"|(<?)(https?://[^\s<]+))",
    re.S,
)
_ZWSP = "\u200b"
# What ends a bare link without being part of it (Discord's link rule: a sentence's
# punctuation, a quote, a closing bracket; ")" only when it closes no "(" of the link), and the
# bold, strikethrough and spoiler markers that close around a link.
_AFTER_LINK = frozenset(".,:;\"')]*~|")
# Code, as for mentions and links, but a fence still open runs to the end of the text, and so
# does an inline span still open on the text's last line (a streaming answer's code: its
# "||", a shell's "or", is no spoiler to open); or a character after a backslash, shown as
# written; or a spoiler's marker.
_CODE_ESCAPE_OR_SPOILER = re.compile(
    r"(?:```.*?(?:```|\Z)|(`+)(?:[^`\n]|[^`\n][^\n]*?[^`\n])\1(?!`)|`+[^`\n]*\Z)"
    r"|\\.|(\|\|)",
    re.S,
)
_MAY_START = re.compile(r"[`\\|]")
SPOILER = "||"
NOBODY = discord.AllowedMentions.none()
ASKER_ONLY = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
# discord.py tries a call 5 times, sleeping each 429's retry_after; a longer storm gets more
# rounds of that (each already waited), so an update is late rather than lost.
RATE_LIMITED_ROUNDS = 4

T = TypeVar("T")
# The reference of a slash command's deferred response (Discord's ids are never 0).
ORIGINAL = 0
# How long Discord takes an interaction's token (its response and follow-ups), from its
# creation.
TOKEN_LIFETIME = timedelta(minutes=15)
# The original response's id in the interaction webhook's message routes: Discord's Edit
# Original Interaction Response is its Edit Webhook Message with this id. discord.py's
# `Webhook.edit_message` types the id as an int and quotes it in the route (%40original);
# aiohttp's URL (yarl) sends it as `@original`, the path Discord documents.
ORIGINAL_RESPONSE = cast(int, "@original")
# The interaction token's 15 minutes are not used to the last second: an edit sent just
# before the end would fail half-way through the answer.
TOKEN_MARGIN = timedelta(seconds=30)
# Typing shows when no text is visible after this long, renewed while Discord shows it (10 s).
TYPING_GRACE_S = 0.5
TYPING_RENEW_S = 8.0
# An interaction token Discord no longer takes: 401 Invalid Webhook Token, 404 Unknown Webhook.
_TOKEN_GONE = (401, 404)
# Discord's code for a message that is not there (deleted in the channel: a moderator).
UNKNOWN_MESSAGE = 10008
# Discord's code for a reply refused where the bot may not read the channel's history (403).
CANNOT_REPLY = 160002


def neutralise(text: str, *, bracket_links: bool = False) -> str:
    """Mass mentions as text: "@\u200beveryone" renders like "@everyone" and pings no one
    (allowed_mentions already stops the ping; this keeps it from even looking like one).
    Only a mention standing as one: not in code, where it was put in every command a user
    would copy, nor inside an address ("deploy@here.example.com", "ops@heretics.org",
    "https://mastodon.social/@everyone_art"), which it broke (a helper's review).
    `bracket_links`: every http(s) link outside code in <angle brackets> too, which Discord
    shows as the same link with no embed (nothing fetched); one already so stays as it is."""
    if "@" not in text and not (bracket_links and "://" in text):
        return text

    def shown(m: re.Match[str]) -> str:
        code, _ticks, mention, wrapped, masked, _opened, bare = m.groups()
        if mention is not None:
            return f"@{_ZWSP}{mention}"
        if code is not None or wrapped is not None or not bracket_links:
            return m.group()
        return _bracketed(masked if masked is not None else bare)  # an opened "<" is reused

    return _CODE_MENTION_OR_LINK.sub(shown, text)


def reopen_spoiler(text: str) -> str:
    """The spoiler marker that `text` leaves open at its end ("" if none): each message is
    rendered alone, so the next piece of a split answer opens it again."""
    return SPOILER if _open_spoiler(text) is not None else ""


def close_spoiler(text: str) -> str:
    """`text` with a spoiler left open at its end closed, so that what it hides does not
    show. A spoiler with nothing in it yet is left as written (its marker shows until text
    follows it). A last "|" in the spoiler is taken as half of its closing marker: the text
    as sent is then never longer than it will be once the model writes the other half (the
    splitter's binary search needs a longer text never to be shorter as sent)."""
    state = _open_spoiler(text)
    if state is None:
        return text
    opened, half = state
    if opened == len(text):
        return text
    return text + ("|" if half else SPOILER)


def settle_spoiler(text: str) -> str:
    """The whole answer with the marker of a spoiler it never closes escaped (`\\|\\|`), so that
    its final messages show it as written, as Discord shows an unpaired marker: prose such as
    "a || b" is no spoiler, and what follows it is not hidden."""
    state = _open_spoiler(text)
    if state is None:
        return text
    opened = state[0]
    return text[: opened - len(SPOILER)] + "\\|\\|" + text[opened:]


def _open_spoiler(text: str) -> tuple[int, bool] | None:
    """For a spoiler still open at the end of `text`: where its marker ends, and whether the
    text ends in a "|" that is only text so far (no marker, code or escape took it); None
    when every spoiler is closed."""
    if SPOILER not in text:
        return None
    opened: int | None = None
    taken = 0  # where the last code, escape or marker ends
    # From one "`", "\\" or "|" to the next (a scan of every character is many times slower:
    # the splitter measures each prefix it tries).
    pos = 0
    while (hit := _MAY_START.search(text, pos)) is not None:
        m = _CODE_ESCAPE_OR_SPOILER.match(text, hit.start())
        if m is None:
            pos = hit.end()
            continue
        if m.group(2) is not None:
            opened = m.end() if opened is None else None
        pos = taken = m.end()
    if opened is None:
        return None
    return opened, text.endswith("|") and taken < len(text)


def _bracketed(link: str) -> str:
    """<link> and what follows it. A "<" written before the link was part of the match and is
    the opening one (so a link still streaming in its brackets gets one character, no more
    than its closing ">" would: a longer text is never shorter as sent). A ">" in
    the link (not a URL's character: browsers send it as %3E) is written %3E, so the brackets
    hold the whole link."""
    end = len(link)
    while end and link[end - 1] in _AFTER_LINK and not _closes_a_paren(link[:end]):
        end -= 1
    return f"<{link[:end].replace('>', '%3E')}>{link[end:]}"


def _closes_a_paren(link: str) -> bool:
    return link.endswith(")") and link.count("(") >= link.count(")")


class DiscordSurface:
    """One channel, for the kit's streamer: pieces of Markdown in, REST calls out."""

    def __init__(
        self,
        channel: discord.PartialMessageable,
        gate: Gate,
        *,
        reply_to: discord.MessageReference | None,
        on_first_send: asyncio.Event,
        link_previews: bool = False,
        on_reply_refused: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._channel = channel
        self._on_reply_refused = on_reply_refused
        self.suppress_embeds = not link_previews
        self._gate = gate
        self._reply_to = reply_to
        self._first_sent = on_first_send
        self._instead_of_original: int | None = None

    def shows(self, piece: str) -> bool:
        return bool(piece.strip())  # Discord renders Markdown; any non-blank text shows

    def content(self, piece: str) -> str:
        """The piece as sent: a spoiler left open closed; mass mentions as text; with embeds
        off, its links in brackets."""
        return neutralise(close_spoiler(piece), bracket_links=self.suppress_embeds)

    def shown_length(self, piece: str) -> int:
        """The length Discord counts (and refuses past 2,000): the piece as sent."""
        return len(self.content(piece))

    async def send(self, piece: str, *, plain: bool) -> int:
        reference, self._reply_to = self._reply_to, None  # only the first message replies
        try:
            sent = await gated(self._gate, self._channel.id, self._sending(piece, reference))
        except AdapterError as exc:
            # No Read Message History in the channel: Discord refuses a reply there (403
            # 160002), not a message; the answer was refused whole, and its asker saw nothing.
            cause = exc.__cause__
            if reference is None or getattr(cause, "code", None) != CANNOT_REPLY:
                raise
            log.info("channel %s: the answer goes without its reply (no Read Message History)",
                     self._channel.id)  # fmt: skip
            if self._on_reply_refused is not None:
                await self._on_reply_refused()
            sent = await gated(self._gate, self._channel.id, self._sending(piece, None))
        self._first_sent.set()
        return sent.id

    def _sending(
        self, piece: str, reference: discord.MessageReference | None
    ) -> Callable[[], Awaitable[discord.Message]]:
        async def call() -> discord.Message:
            content, hide = self.content(piece), self.suppress_embeds
            if reference is None:
                return await self._channel.send(
                    content, allowed_mentions=NOBODY, suppress_embeds=hide
                )
            return await self._channel.send(
                content, reference=reference, allowed_mentions=ASKER_ONLY, suppress_embeds=hide
            )

        return call

    async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
        if ref == ORIGINAL:
            # A slash command's response shown by an attempt cut off by a crash, whose token
            # is no longer known (lapsed): the piece goes on in a message of its own.
            if self._instead_of_original is None:
                self._instead_of_original = await self.send(piece, plain=plain)
                return
            ref = self._instead_of_original
        message = self._channel.get_partial_message(ref)

        async def call() -> discord.Message:
            # No flags here: the message keeps the SUPPRESS_EMBEDS it was sent with.
            return await message.edit(content=self.content(piece), allowed_mentions=NOBODY)

        await gated(self._gate, self._channel.id, call)


class Responding(Protocol):
    """What a slash command's answer is written through: its deferred response and
    follow-ups, by the interaction's token. The `discord.Interaction` where it came to this
    worker; `WebhookResponse` where it came to another (or to this one before a restart)."""

    @property
    def id(self) -> int: ...

    @property
    def channel_id(self) -> int | None: ...

    @property
    def expires_at(self) -> datetime: ...

    @property
    def followup(self) -> discord.Webhook: ...

    async def edit_original_response(
        self, *, content: str | None = ..., allowed_mentions: discord.AllowedMentions | None = ...
    ) -> object: ...


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    """A deferred command's response where another worker holds its interaction (the turn
    ran where the conversation's lease was, or in an orphan sweep after a restart): the
    application's webhook with the interaction's token (kept in the cache for its 15
    minutes, adapters.discord.shared), Discord's public way to answer an interaction."""

    id: int
    channel_id: int
    followup: discord.Webhook = field(repr=False)  # it holds the token: never in a log line

    @property
    def expires_at(self) -> datetime:
        return discord.utils.snowflake_time(self.id) + TOKEN_LIFETIME

    async def edit_original_response(
        self, *, content: str | None = None, allowed_mentions: discord.AllowedMentions | None = None
    ) -> object:
        return await self.followup.edit_message(
            ORIGINAL_RESPONSE, content=content, allowed_mentions=allowed_mentions
        )


@dataclass(slots=True)
class _ByToken:
    """A message the interaction's token edits (its response, or a follow-up): what it shows,
    and the channel message that goes on from it once the token has expired."""

    shown: str = ""
    after: int | None = None


class InteractionSurface:
    """A slash command's answer: the first piece is the deferred response (edited as it
    grows), the pieces past Discord's 2,000 characters are follow-up messages (the
    interaction's webhook: they need no permission to post in the channel). Once the token
    has expired (by the clock, or Discord answered 401), the pieces go on in channel messages,
    and a piece still growing in a token's message goes on in one that shows what it does
    not."""

    def __init__(self, interaction: Responding, rest: DiscordSurface, gate: Gate) -> None:
        self._interaction = interaction
        self._rest = rest
        self._gate = gate
        self._answered = False
        self._expired = False
        self._by_token: dict[int, _ByToken] = {}  # ORIGINAL and the follow-ups

    def shows(self, piece: str) -> bool:
        return self._rest.shows(piece)

    async def send(self, piece: str, *, plain: bool) -> int:
        with _as_refusal():
            return await self._send(piece, plain=plain)

    async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
        with _as_refusal():
            await self._edit(ref, piece, plain=plain)

    async def _send(self, piece: str, *, plain: bool) -> int:
        if not self._answered:
            self._answered = True
            self._by_token[ORIGINAL] = _ByToken()
            await self._show(ORIGINAL, piece, plain=plain)
            return ORIGINAL
        if self._token_usable():
            sent = await self._with_token(
                lambda: self._interaction.followup.send(
                    content=self._rest.content(piece),
                    allowed_mentions=NOBODY,
                    suppress_embeds=self._rest.suppress_embeds,
                    wait=True,
                )
            )
            if sent is not None:
                self._by_token[sent.id] = _ByToken(shown=piece)
                return sent.id
        return await self._rest.send(piece, plain=plain)

    async def _edit(self, ref: int, piece: str, *, plain: bool) -> None:
        if ref == ORIGINAL:
            self._answered = True
            self._by_token.setdefault(ORIGINAL, _ByToken())
        if ref in self._by_token:
            await self._show(ref, piece, plain=plain)
        else:
            await self._rest.edit(ref, piece, plain=plain)

    async def _show(self, ref: int, piece: str, *, plain: bool) -> None:
        message = self._by_token[ref]
        edited = self._token_usable() and (
            await self._with_token(lambda: self._edit_by_token(ref, piece)) is not None
        )
        if edited:
            message.shown = piece
            return
        # The message keeps what it shows; the rest of the piece follows it (a spoiler open
        # where it stops opened again).
        shown = message.shown
        rest = piece
        if piece.startswith(shown):
            rest = piece[len(shown) :]
            if reopen_spoiler(shown):
                rest = reopen_spoiler(shown) + rest.lstrip()
        if not self._rest.shows(rest):
            return
        if message.after is None:
            message.after = await self._rest.send(rest, plain=plain)
        else:
            await self._rest.edit(message.after, rest, plain=plain)

    async def _edit_by_token(self, ref: int, piece: str) -> object:
        content = self._rest.content(piece)  # the response has no flag: its links in brackets
        if ref == ORIGINAL:
            return await self._interaction.edit_original_response(
                content=content, allowed_mentions=NOBODY
            )
        return await self._interaction.followup.edit_message(
            ref, content=content, allowed_mentions=NOBODY
        )

    def _token_usable(self) -> bool:
        return not self._expired and (
            discord.utils.utcnow() < self._interaction.expires_at - TOKEN_MARGIN
        )

    async def _with_token(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call` with the interaction's token; None (and no more token calls) when Discord
        no longer takes it."""

        async def guarded() -> T | None:
            try:
                return await call()
            except discord.HTTPException as exc:
                # A message of it deleted in the channel (a moderator) is not an expired
                # token: MessageGone (gated), never shown again in a channel message.
                if exc.status in _TOKEN_GONE and exc.code != UNKNOWN_MESSAGE:
                    log.info("interaction %s: token expired", self._interaction.id)
                    return None
                raise

        result = await gated(self._gate, self._interaction.channel_id or 0, guarded)
        if result is None:
            self._expired = True  # Discord ended the token before our clock said so
        return result


@contextlib.contextmanager
def _as_refusal() -> Iterator[None]:
    """A slash command's answer cannot wait for Discord to come back: its response lives with
    the interaction in this process, and the command's clean-up removes it once the turn
    settles. So Discord not answering it is taken as a refusal: the answer is read to its end
    and recorded, and the log says it was not shown."""
    try:
        yield
    except PlatformAway as exc:
        raise AdapterError(str(exc)) from exc


async def gated(gate: Gate, channel: int, call: Callable[[], Awaitable[T]]) -> T:
    """`call` within the channel's budget, again after a storm of 429s. Discord not answering
    (a 5xx after discord.py's own retries, no connection, a timeout) or not taking calls (a
    429 through every round) is PlatformAway; an edit
    of a message deleted in the channel (a moderator) MessageGone; any other failure an
    AdapterError."""
    for round_ in range(RATE_LIMITED_ROUNDS):
        try:
            async with gate.slot(str(channel), group=False):
                await still_showing()  # after the wait: this worker's answer still?
                return await call()
        except discord.DiscordServerError as exc:
            raise PlatformAway(f"channel {channel}: Discord answered {exc.status}") from exc
        except (OSError, aiohttp.ClientError) as exc:  # TimeoutError is an OSError
            raise PlatformAway(f"channel {channel}: {type(exc).__name__}") from exc
        except discord.NotFound as exc:
            gone = MessageGone if exc.code == UNKNOWN_MESSAGE else AdapterError
            raise gone(f"channel {channel}: {exc}") from exc
        except discord.HTTPException as exc:
            if exc.status != 429:
                raise AdapterError(f"channel {channel}: {exc}") from exc
            if round_ == RATE_LIMITED_ROUNDS - 1:
                # Discord not taking calls for now (a storm that outlasted every round, or
                # Cloudflare's ban of this host, which discord.py raises at once with its
                # HTML page): as when it does not answer, the turn waits, not lost.
                raise PlatformAway(f"channel {channel}: Discord still answers 429") from exc
            log.info("channel %s: still rate limited after discord.py's retries", channel)
    raise AssertionError("unreachable")  # the last round returns or raises


async def play(
    channel: discord.PartialMessageable,
    gate: Gate,
    chunks: AsyncIterator[str],
    *,
    interval_s: float,
    reply_to: discord.MessageReference | None = None,
    interaction: Responding | None = None,
    link_previews: bool = False,
    on_reply_refused: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Streams `chunks` into `channel` (into the deferred response of `interaction` first),
    typing until the first visible text (a deferred interaction shows "thinking" instead).
    `on_reply_refused`: called when Discord refuses `reply_to` there (160002)."""
    first_sent = asyncio.Event()
    rest = DiscordSurface(
        channel,
        gate,
        reply_to=reply_to,
        on_first_send=first_sent,
        link_previews=link_previews,
        on_reply_refused=on_reply_refused,
    )
    surface: DiscordSurface | InteractionSurface = rest
    if interaction is not None:
        surface = InteractionSurface(interaction, rest, gate)
        first_sent.set()
    typing = asyncio.create_task(_type_until(channel, gate, first_sent))
    try:
        pacing = Pacing(interval_s, MAX_MESSAGE, rest.shown_length, reopen_spoiler, settle_spoiler)
        await Streamer(surface, pacing).play(chunks)
    finally:
        typing.cancel()
        await asyncio.gather(typing, return_exceptions=True)


async def _type_until(channel: discord.PartialMessageable, gate: Gate, done: asyncio.Event) -> None:
    """Typing, from TYPING_GRACE_S until `done` (the first visible text)."""
    wait = TYPING_GRACE_S
    while not await _set_within(done, wait):
        try:
            async with gate.slot(f"typing:{channel.id}", group=False):
                await channel.typing()  # one indicator, shown by Discord for 10 s
        except discord.HTTPException as exc:  # a missing typing indicator costs nothing else
            log.info("channel %s: typing indicator failed: %s", channel.id, exc)
            return
        wait = TYPING_RENEW_S


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
