"""What Discord told one worker that every worker of the bot needs, kept in the cache
(bot.storage.cache): in this process's memory by default, in Redis where it is configured, so
that each fact is known to every worker. Each lapses with its entry (the cache's TTL).

- A channel that refused a reply (403, code 160002: the bot may not read its history): its
  answers go out plain for UNREPLIED_S, without a refused reply first. Kept per process, each
  worker paid its own refused call (a 403 Discord counts against the host) per channel.
- A command refused to its sender alone (an ephemeral response): over the rate limit its
  stub's turn says the rate-limit sentence, which that response said already. The turn runs
  where the conversation's lease is, another worker's when it held it (its own turn there),
  or the orphan sweep's: that worker said the sentence again, in the channel, for everyone.
- A command deferred ("Parley is thinking..."): its turn runs where the conversation's lease
  is, or in another worker's orphan sweep after a restart, and the `discord.Interaction` is in
  the memory of the worker it came to alone. Its token (the interaction's webhook: Discord's
  public way to answer it, for 15 minutes from its creation) is kept until then, so that the
  worker answering it writes the answer in the deferred response; and that it was a command,
  for a day, so that an answer after the token's time goes out plain, replying to no message.
  The token is a secret: never logged, and gone from the cache once Discord takes it no more.
- A deferred response answered so, through its token, by a worker that does not hold the
  interaction: the worker that does holds it until the command is answered, then deletes a
  response nothing answered; this one was answered (elsewhere), and stays.

Each is read only where an answer goes out (the last where a deferred response is cleaned
up), never for a message that comes in.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import discord

from bot.storage import keys
from bot.storage.base import Cache

# How long a channel that refused a reply (no Read Message History) gets its answers without
# one before a reply is tried again (the permission given since).
UNREPLIED_S = 600.0
# How long a command's refusal said to its sender alone is known: its stub's turn normally
# runs at once, but waits in SQL through a database outage; an entry is a few bytes.
TOLD_S = 86_400.0
# Discord's 15 minutes for an interaction's token, from its creation (a deferred response
# answered through it the longest).
TOKEN_S = 900.0
_KNOWN = b"1"


class SharedFacts:
    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def replies_in(self, bot: int, channel_id: int) -> bool:
        """Whether an answer in the channel may reply to its question: no worker of `bot`
        had a reply refused there in the last UNREPLIED_S. Yes where the cache does not
        answer (one refused call, then the answer goes out plain)."""
        return await self._cache.get(keys.discord_unreplied(bot, channel_id)) is None

    async def reply_refused(self, bot: int, channel_id: int) -> None:
        await self._cache.set(keys.discord_unreplied(bot, channel_id), _KNOWN, UNREPLIED_S)

    async def told(self, interaction_id: str) -> None:
        """The command's refusal was said to its sender alone."""
        await self._cache.set(keys.discord_told(interaction_id), _KNOWN, TOLD_S)

    async def was_told(self, interaction_id: str) -> bool:
        # Kept until it lapses: a turn run again (its worker stopped mid-way) says nothing
        # either.
        return await self._cache.get(keys.discord_told(interaction_id)) is not None

    async def deferred(self, interaction_id: str, token: str, expires_at: datetime) -> None:
        """The command was deferred: its token, until `expires_at` (Discord's 15 minutes), and
        that it is a command, for TOLD_S."""
        left = min((expires_at - discord.utils.utcnow()).total_seconds(), TOKEN_S)
        writes = [self._cache.set(keys.discord_deferred(interaction_id), _KNOWN, TOLD_S)]
        if left > 0:
            writes.append(self._cache.set(keys.discord_token(interaction_id), token.encode(), left))
        await asyncio.gather(*writes)

    async def token(self, interaction_id: str) -> str | None:
        """The token of a command deferred by any worker, while Discord takes it; None where
        `interaction_id` is no command's, its time is over, or the cache does not answer."""
        token = await self._cache.get(keys.discord_token(interaction_id))
        return token.decode() if token is not None else None

    async def was_deferred(self, interaction_id: str) -> bool:
        """Whether `interaction_id` is a command's (deferred, in the last TOLD_S): no message
        of that id to reply to."""
        return await self._cache.get(keys.discord_deferred(interaction_id)) is not None

    async def taken(self, interaction_id: str) -> None:
        """The command's deferred response is answered through its token, here."""
        await self._cache.set(keys.discord_taken(interaction_id), _KNOWN, TOKEN_S)

    async def was_taken(self, interaction_id: str) -> bool:
        return await self._cache.get(keys.discord_taken(interaction_id)) is not None
