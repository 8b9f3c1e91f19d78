"""Shows one streamed answer in one Discord channel: the Discord side of the kit's `Streamer`.

Pacing, splitting at 2,000 characters and "latest text wins" are the kit's
(`adapters.kit.streamer`); this module sends the first message and edits it as the answer
grows, every call through the outbound gate (Discord: 5 sends or edits per 5 s per channel,
for every answer in that channel together). A 429 that still gets through is retried by
discord.py after its `retry_after`, so nothing is dropped.

Model output must never ping anyone: every call carries `AllowedMentions.none()` (only the
asker may be pinged, by the reply reference of the first message), and "@everyone"/"@here" get
a zero-width space so that even a client that ignores allowed mentions shows them as text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import discord

from adapters.kit.gate import Gate
from adapters.kit.streamer import Pacing, Streamer
from bot.errors import AdapterError

log = logging.getLogger(__name__)

MAX_MESSAGE = 2000  # characters of a message's content
_MASS_MENTIONS = ("@everyone", "@here")
_ZWSP = "\u200b"
NOBODY = discord.AllowedMentions.none()
ASKER_ONLY = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
# discord.py tries a call 5 times, sleeping each 429's retry_after; a longer storm gets more
# rounds of that (each already waited), so an update is late rather than lost.
RATE_LIMITED_ROUNDS = 4

T = TypeVar("T")
# The reference of a slash command's deferred response (Discord's ids are never 0).
ORIGINAL = 0


def neutralise(text: str) -> str:
    """Mass mentions as text: "@\u200beveryone" renders like "@everyone" and pings no one."""
    for mention in _MASS_MENTIONS:
        text = text.replace(mention, f"@{_ZWSP}{mention[1:]}")
    return text


def shown_length(text: str) -> int:
    """The length Discord counts: the text as sent, after `neutralise`."""
    return len(text) + sum(text.count(m) for m in _MASS_MENTIONS)


class DiscordSurface:
    """One channel, for the kit's streamer: pieces of Markdown in, REST calls out."""

    def __init__(
        self,
        channel: discord.PartialMessageable,
        gate: Gate,
        *,
        reply_to: discord.MessageReference | None,
        on_first_send: asyncio.Event,
    ) -> None:
        self._channel = channel
        self._gate = gate
        self._reply_to = reply_to
        self._first_sent = on_first_send

    def shows(self, piece: str) -> bool:
        return bool(piece.strip())  # Discord renders Markdown; any non-blank text shows

    async def send(self, piece: str, *, plain: bool) -> int:
        reference, self._reply_to = self._reply_to, None  # only the first message replies
        mentions = ASKER_ONLY if reference is not None else NOBODY

        async def call() -> discord.Message:
            if reference is None:
                return await self._channel.send(neutralise(piece), allowed_mentions=mentions)
            return await self._channel.send(
                neutralise(piece), reference=reference, allowed_mentions=mentions
            )

        sent = await gated(self._gate, self._channel.id, call)
        self._first_sent.set()
        return sent.id

    async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
        message = self._channel.get_partial_message(ref)

        async def call() -> discord.Message:
            return await message.edit(content=neutralise(piece), allowed_mentions=NOBODY)

        await gated(self._gate, self._channel.id, call)


class InteractionSurface:
    """A slash command's answer: the first piece is the deferred response (edited as it
    grows), the pieces past Discord's 2,000 characters are channel messages."""

    def __init__(self, interaction: discord.Interaction, rest: DiscordSurface, gate: Gate) -> None:
        self._interaction = interaction
        self._rest = rest
        self._gate = gate
        self._answered = False

    def shows(self, piece: str) -> bool:
        return self._rest.shows(piece)

    async def send(self, piece: str, *, plain: bool) -> int:
        if self._answered:
            return await self._rest.send(piece, plain=plain)
        await self._edit_original(piece)
        self._answered = True
        return ORIGINAL

    async def edit(self, ref: int, piece: str, *, plain: bool) -> None:
        if ref == ORIGINAL:
            await self._edit_original(piece)
        else:
            await self._rest.edit(ref, piece, plain=plain)

    async def _edit_original(self, piece: str) -> None:
        async def call() -> discord.InteractionMessage:
            return await self._interaction.edit_original_response(
                content=neutralise(piece), allowed_mentions=NOBODY
            )

        await gated(self._gate, self._interaction.channel_id or 0, call)


async def gated(gate: Gate, channel: int, call: Callable[[], Awaitable[T]]) -> T:
    """`call` within the channel's budget, again after a storm of 429s."""
    for round_ in range(RATE_LIMITED_ROUNDS):
        try:
            async with gate.slot(str(channel), group=False):
                return await call()
        except discord.HTTPException as exc:
            if exc.status != 429 or round_ == RATE_LIMITED_ROUNDS - 1:
                raise AdapterError(f"channel {channel}: {exc}") from exc
            log.info("channel %s: still rate limited after discord.py's retries", channel)
    raise AssertionError("unreachable")  # the last round returns or raises


async def play(
    channel: discord.PartialMessageable,
    gate: Gate,
    chunks: AsyncIterator[str],
    *,
    interval_s: float,
    reply_to: discord.MessageReference | None = None,
    interaction: discord.Interaction | None = None,
) -> None:
    """Streams `chunks` into `channel` (into the deferred response of `interaction` first),
    typing until the first visible text (a deferred interaction shows "thinking" instead)."""
    first_sent = asyncio.Event()
    rest = DiscordSurface(channel, gate, reply_to=reply_to, on_first_send=first_sent)
    surface: DiscordSurface | InteractionSurface = rest
    if interaction is not None:
        surface = InteractionSurface(interaction, rest, gate)
        first_sent.set()
    typing = asyncio.create_task(_type_until(channel, first_sent))
    try:
        await Streamer(surface, Pacing(interval_s, MAX_MESSAGE, shown_length)).play(chunks)
    finally:
        typing.cancel()
        await asyncio.gather(typing, return_exceptions=True)


async def _type_until(channel: discord.PartialMessageable, done: asyncio.Event) -> None:
    try:
        async with channel.typing():  # discord.py renews it every few seconds
            await done.wait()
    except discord.HTTPException as exc:  # a missing typing indicator costs nothing else
        log.info("channel %s: typing indicator failed: %s", channel.id, exc)
