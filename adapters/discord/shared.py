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

Each is read only where an answer goes out, never for a message that comes in.
"""

from __future__ import annotations

from bot.storage import keys
from bot.storage.base import Cache

# How long a channel that refused a reply (no Read Message History) gets its answers without
# one before a reply is tried again (the permission given since).
UNREPLIED_S = 600.0
# How long a command's refusal said to its sender alone is known: its stub's turn normally
# runs at once, but waits in SQL through a database outage; an entry is a few bytes.
TOLD_S = 86_400.0
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
