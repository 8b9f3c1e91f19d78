"""Backfill: what was said to the bot while it was away, answered once.

Discord's gateway does not re-send what was posted while Parley was stopped, or while its
connection was down and could not be resumed (a resume replays the missed events itself:
discord.py's `on_resumed`). So after a start and after every new session (`on_ready`, per
shard `on_shard_ready`), each conversation with a message recorded in the last
`backfill_hours` is read from its newest message recorded as the gap began (SQL knows its
Discord id: `Store.last_platform_message_ids`, read before the gateway connects and when a
connection drops, so a message that arrives live before the backfill reads does not move
the start past what was missed; `channel.history(after=...)`), and every message goes the
way a live one goes. Its idempotency key is its Discord id, so a message the gateway delivered
too, or an earlier backfill read, is recorded once and answered once; one recorded already is
left alone (one read per page), so it is not counted again towards its sender's rate limit
and an auto_thread question opens no second thread. Two differences: a
message read from a log comes without its sender's server roles, so the member is fetched
(once per sender and backfill) for a message the bot would take, and for chatter not for the
bot only where the access rules name roles (they decide whether it is kept); and no notice
is sent for one (a photo sent while away, a refusal: the adapter's `take` submits it
quietly), since nothing records that it was sent and every later backfill would send it
again.

An `auto_thread` channel's mentions are recorded in the threads they opened, not in the
channel's conversation, so those channels are read from `backfill_hours` ago: newest first, as
is a conversation first recorded in the gap, so that the cap of pages leaves out the oldest of
a busy channel's messages, not the gap's.

The shards of one process backfill at about the same time: a channel outside discord.py's
cache (a DM, another process's server) is fetched once among them to learn its shard
(`ChannelShards`), not once by each.

Every read goes through the outbound gate: each channel's own window, and the global one that
every send of the bot shares (across processes with Redis). At most MAX_PAGES pages of 100
messages per channel: a channel busy for hours is not read to its end.

A channel Discord closes to the bot (403) or that is gone (404) is skipped. One Discord fails
to give (a 5xx after discord.py's own retries, a 429 storm, no connection, a timeout: what
comes with the incident that caused the reconnect) does not end the backfill, nor is it
skipped: the other channels are read, and it is read again after RETRY_S, READ_ROUNDS times
in all; still failing, the backfill raises `Unread`, and the adapter keeps its marks for the
next new session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import aiohttp
import discord

from adapters.kit.actions import Notice, Observe, Submit
from adapters.kit.gate import Gate
from bot.lru import Lru
from bot.storage.base import Store
from bot.types import ConversationKey

from .translate import PLATFORM, Action, Author, Fetch, message_key, translate

log = logging.getLogger(__name__)

PAGE = 100  # Discord's largest page of a channel's messages
MAX_PAGES = 5
# Channels whose shard a process remembers for its backfills (an int each), and channels
# kept whole for the backfill of their shard after another shard's looked them up.
CHANNELS_KNOWN = 100_000
RECENT_CHANNELS = 1_000
# Rounds of reading the channels that Discord failed to give, and the pause before each
# round after the first.
READ_ROUNDS = 3
RETRY_S = 5.0
# What Discord failing a moment raises (not a refusal: 403 and 404 are skipped).
_FAILING = (discord.HTTPException, OSError, aiohttp.ClientError)
# Each conversation's newest recorded message (its Discord id) as a gap began.
Marks = dict[ConversationKey, str]
# The adapter's way with a live message, once translated.
Take = Callable[[discord.Message, Action], Awaitable[None]]
Channel = discord.abc.Messageable


class Backfill:
    def __init__(
        self,
        client: discord.Client,
        store: Store,
        gate: Gate,
        *,
        hours: float,
        auto_thread: Sequence[int],
        me: int,
        take: Take,
        roles_block: bool = False,
        roles_matter: bool = False,
        shards: ChannelShards | None = None,
    ) -> None:
        """`roles_block`: access rules block some roles (`access.blocked_roles`), so a sender
        whose roles cannot be read is not answered (a block list must not fail open).
        `roles_matter`: the access rules name roles (allowed or blocked), so whether chatter
        not for the bot is kept depends on its sender's; else such chatter needs no lookup.
        `shards`: shared by the backfills of one process's shards."""
        self._client = client
        self._store = store
        self._gate = gate
        self._hours = hours
        self._auto_thread = auto_thread
        self._me = me
        self._take = take
        self._roles_block = roles_block
        self._roles_matter = roles_matter or roles_block
        self._shards = shards or ChannelShards()
        # Senders looked up in this backfill, by (server, user): each once, however many of
        # their messages are read back (a lookup waits for the server's read window).
        self._members: dict[tuple[int, int], Author | _RolesUnknown | None] = {}

    async def run(self, shard_id: int | None, marks: Marks | None = None) -> int:
        """Reads the conversations of `shard_id` (None: every one) and takes each message,
        oldest first per channel; how many were read. `marks`: each conversation's newest
        recorded message as the gap began (None: not known, the newest now). A conversation
        recorded now and not then began in the gap: read from `backfill_hours` ago."""
        since = discord.utils.utcnow() - timedelta(hours=self._hours)
        starts: dict[int, discord.abc.Snowflake | datetime] = {
            channel: since for channel in self._auto_thread
        }
        recorded = await self._store.last_platform_message_ids(PLATFORM, since)
        for key, newest in recorded.items():
            if not key.chat_id.isdigit():  # not a Discord id
                continue
            mark = newest if marks is None else marks.get(key)
            if mark is None:
                starts.setdefault(int(key.chat_id), since)
            elif mark.isdigit():
                starts[int(key.chat_id)] = discord.Object(int(mark))
        handed, total = 0, len(starts)
        for round_ in range(READ_ROUNDS):
            if round_:
                await asyncio.sleep(RETRY_S)
            unread: dict[int, discord.abc.Snowflake | datetime] = {}
            for channel_id, after in starts.items():
                try:
                    channel = await self._shards.channel(channel_id, shard_id, self._channel)
                    if channel is not None:
                        handed += await self._read(channel, after)
                except _FAILING as exc:  # read again (a message recorded already is left)
                    log.warning("backfill: channel %s not read (%s)", channel_id, _said(exc))
                    unread[channel_id] = after
            if not (starts := unread):
                break
        if handed:
            log.info("backfill: %d messages read back from %d channels", handed, total)
        if starts:
            raise Unread(f"{len(starts)} channels not read after {READ_ROUNDS} tries")
        return handed

    async def _channel(self, channel_id: int) -> Channel | None:
        """The channel from the cache (servers' channels and active threads), else from
        Discord (a DM, an archived thread); None when it is gone or closed to the bot."""
        cached = self._client.get_channel(channel_id)
        if isinstance(cached, discord.abc.Messageable):
            return cached
        try:
            async with self._gate.slot(f"read:{channel_id}", group=False):
                fetched = await self._client.fetch_channel(channel_id)
        except (discord.NotFound, discord.Forbidden) as exc:
            log.info("backfill: channel %s skipped (%s)", channel_id, exc.status)
            return None
        return fetched if isinstance(fetched, discord.abc.Messageable) else None

    async def _read(self, channel: Channel, after: discord.abc.Snowflake | datetime) -> int:
        if isinstance(after, datetime):
            return await self._read_newest(channel, after)
        handed = 0
        for _ in range(MAX_PAGES):
            try:
                async with self._gate.slot(f"read:{_id(channel)}", group=False):
                    page = [m async for m in channel.history(after=after, limit=PAGE)]
            except (discord.NotFound, discord.Forbidden) as exc:  # no Read Message History
                log.info("backfill: channel %s not read (%s)", _id(channel), exc.status)
                return handed
            handed += await self._take_page(page)
            if len(page) < PAGE:
                return handed
            after = page[-1]
        log.warning(
            "backfill: channel %s had more than %d messages to read back; the rest is not read",
            _id(channel),
            PAGE * MAX_PAGES,
        )
        return handed

    async def _read_newest(self, channel: Channel, since: datetime) -> int:
        """A channel with no mark (an auto_thread channel, whose mentions are recorded in
        their threads; a conversation first recorded in the gap): its messages after `since`,
        at most the newest MAX_PAGES pages, taken oldest first. Read from `since` on, a
        channel with more messages in `backfill_hours` than the cap (a busy support channel)
        was read to the cap at every start, and never to the gap (minutes ago)."""
        newest: list[discord.Message] = []
        before: discord.abc.Snowflake | None = None
        for _ in range(MAX_PAGES):
            try:
                async with self._gate.slot(f"read:{_id(channel)}", group=False):
                    page = [
                        m
                        async for m in channel.history(
                            limit=PAGE, before=before, after=since, oldest_first=False
                        )
                    ]
            except (discord.NotFound, discord.Forbidden) as exc:  # no Read Message History
                log.info("backfill: channel %s not read (%s)", _id(channel), exc.status)
                return 0
            newest += page
            if len(page) < PAGE:
                break
            before = page[-1]
        else:
            log.warning(
                "backfill: channel %s had more than %d messages to read back; the oldest are "
                "not read",
                _id(channel),
                PAGE * MAX_PAGES,
            )
        newest.reverse()
        handed = 0
        for start in range(0, len(newest), PAGE):
            handed += await self._take_page(newest[start : start + PAGE])
        return handed

    async def _take_page(self, page: Sequence[discord.Message]) -> int:
        """The page's messages not recorded yet, each taken, oldest first; how many it had."""
        recorded = await self._recorded(page)
        for message in page:
            if message_key(message.id) not in recorded:
                await self._read_back(message)
        return len(page)

    async def _recorded(self, page: Sequence[discord.Message]) -> frozenset[str]:
        """The page's messages recorded already (they arrived live, or an earlier backfill
        read them): left alone, not taken again. Taken again, each would count towards its
        sender's rate limit once the window that remembers it has passed (an auto_thread
        channel is read from `backfill_hours` ago at every start), and an auto_thread question
        answered in the channel (no thread could be opened then) would try again to open a
        thread for it. When SQL cannot tell, every message is taken: it is recorded and
        answered once anyway."""
        try:
            return await self._store.recorded([message_key(m.id) for m in page])
        except Exception as exc:  # StorageError, or the driver's own on a broken connection
            log.warning("backfill: recorded messages not looked up (%s)", type(exc).__name__)
            return frozenset()

    async def _read_back(self, message: discord.Message) -> None:
        try:
            action = translate(message, self._me)
            # The sender's roles and rights, for a message the bot would take, and for chatter
            # where roles decide whether it is kept (else a lookup per chatter message, each
            # waiting for the server's read window: a helper's review).
            if isinstance(action, Submit | Fetch) or (
                isinstance(action, Observe) and self._roles_matter
            ):
                try:
                    author = await self._member(message)
                except _RolesUnknown as exc:
                    log.warning(
                        "message %s read back: its sender's roles could not be read (%s) and "
                        "access.blocked_roles needs them: not answered", message.id, exc,
                    )  # fmt: skip
                    return
                if author is not None:
                    action = translate(message, self._me, author=author)
            if not isinstance(action, Notice):
                await self._take(message, action)
        except Exception:  # one bad message must not end the backfill
            log.exception("message %s read back could not be handled; skipped", message.id)

    async def _member(self, message: discord.Message) -> Author | None:
        """The sender as a member of the server (roles, Manage Server); None in a DM, or
        when Discord does not give it (they left; Discord is failing), unless roles are
        blocked: then _RolesUnknown."""
        guild = message.guild
        if guild is None or isinstance(message.author, discord.Member):
            return None
        who = (guild.id, message.author.id)
        if who not in self._members:
            self._members[who] = await self._fetch_member(guild, message.author.id)
        found = self._members[who]
        if isinstance(found, _RolesUnknown):
            raise _RolesUnknown(str(found))
        return found

    async def _fetch_member(
        self, guild: discord.Guild, user_id: int
    ) -> Author | _RolesUnknown | None:
        try:
            async with self._gate.slot(f"read:{guild.id}", group=False):
                return await guild.fetch_member(user_id)
        except discord.HTTPException as exc:
            return _RolesUnknown(f"{exc.status} {exc.code}") if self._roles_block else None


@dataclass(slots=True)
class _Deciding:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ChannelShards:
    """The shard of each channel the backfills of one process looked up. A channel outside
    discord.py's cache (a DM, a server of another process) is fetched to learn its shard;
    with several shards in a process, their backfills (one per shard, at about the same time)
    look each channel up one at a time, so it is fetched once, not once per shard."""

    def __init__(self, size: int = CHANNELS_KNOWN) -> None:
        self._known: Lru[int] = Lru(size)
        self._recent: Lru[Channel] = Lru(RECENT_CHANNELS)  # for the owner's backfill, soon
        self._deciding: dict[int, _Deciding] = {}

    async def channel(
        self,
        channel_id: int,
        shard_id: int | None,
        look_up: Callable[[int], Awaitable[Channel | None]],
    ) -> Channel | None:
        """The channel, when it is `shard_id`'s (None: any shard's) and can be read."""
        deciding = self._deciding.setdefault(channel_id, _Deciding())
        deciding.users += 1
        try:
            async with deciding.lock:
                known = self._known.get(channel_id)
                if shard_id is not None and known is not None and known != shard_id:
                    return None  # another shard's: its own backfill reads it
                channel = self._recent.get(channel_id) or await look_up(channel_id)
                self._recent.discard(channel_id)
                if channel is None:
                    return None
                shard = _shard_of(channel)
                self._known.put(channel_id, shard)
                if shard_id is None or shard == shard_id:
                    return channel
                self._recent.put(channel_id, channel)  # for its shard's backfill, soon
                return None
        finally:
            deciding.users -= 1
            if not deciding.users:
                del self._deciding[channel_id]


class Unread(Exception):
    """Channels Discord failed to give in every round: the backfill did not read past the
    gap (its marks are kept for the next new session)."""


class _RolesUnknown(Exception):
    """A sender's roles could not be read back."""


def _said(exc: BaseException) -> str:
    """An error on one line: discord.py's for a 429 from Cloudflare carries its HTML page."""
    if isinstance(exc, discord.HTTPException):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__


def _id(channel: Channel) -> int:
    return int(getattr(channel, "id", 0))


def _shard_of(channel: Channel) -> int:
    """The shard that gets the channel's events: its server's; DMs go to shard 0."""
    guild = getattr(channel, "guild", None)
    if guild is not None:
        return int(guild.shard_id)
    return 0
