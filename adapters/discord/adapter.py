"""The Discord adapter: holds a `discord.Client` (it is not one), translates messages into
`Incoming` messages for the core's intake and streams replies back (`deliver`).

Lifecycle: `__aenter__` logs in over REST (checks the token) and syncs the slash commands,
`run()` is the gateway connection (`client.connect()`, which resumes or reconnects by itself),
`__aexit__` closes the client. Messages arrive as discord.py's `on_message` events, slash and
context-menu commands through the `CommandTree` (`commands`); each is handled in discord.py's
own task and counted, so that `handled()` can wait for them. In an `auto_thread` channel a
mention opens a thread first, and the conversation is the thread's.

Nothing lost: every new gateway session (`on_ready`; per shard `on_shard_ready`) starts a
backfill of what was sent while the bot was away (`backfill`); a message deleted before its
turn ran (`on_raw_message_delete`) is withdrawn, never answered. The outbound gate is in Redis
when Redis is configured, so the processes of a sharded bot keep Discord's global 50 requests
a second together.

Policy (who may talk, admin-only commands, documents, notices) is the core's; this adapter
answers the one question only the platform can: is this member an admin of this server
(Manage Server, read from the member's permissions when the message arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import discord

from adapters.kit.actions import Edit, Ignore, Notice, Observe, Submit
from adapters.kit.away import PlatformWatch
from adapters.kit.gate import Gate, LocalGate, Rate, Rates, RedisGate
from bot import phrases
from bot.conversation.manager import document_question
from bot.documents import DocumentSource
from bot.errors import AdapterError, ConfigError, PlatformAway, StorageError
from bot.lru import Lru
from bot.storage import keys
from bot.storage.base import Recorded, Store
from bot.storage.redis_client import client_for
from bot.types import ConversationKey, Incoming

from . import commands, stream
from .backfill import Backfill, ChannelShards, Marks, Unread
from .settings import DiscordSettings
from .shared import SharedFacts
from .translate import (
    PLATFORM,
    Action,
    Fetch,
    command_incoming,
    content_of,
    edit_of,
    menu_incoming,
    message_key,
    scopes_of,
    thread_name,
    translate,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from adapters.kit.runner import AdapterHost

log = logging.getLogger(__name__)

# Discord's JSON error code for a thread asked for on a message that has one already.
THREAD_ALREADY_CREATED = 160004
# How long a rename of an auto_thread after its edited question may wait for Discord (which
# allows two renames of a channel per 10 minutes): the edit's handling is not held longer.
RENAME_WAIT_S = 10.0
# auto_threads whose name this process gave (their id -> that name): a rename given up leaves
# the thread with it, which the recorded text no longer gives, and is not a member's name.
THREAD_NAMES_KNOWN = 10_000

# Discord's documented limits: 5 messages or edits per 5 s per channel, 50 requests a second
# per bot overall.
DISCORD_RATES = Rates(per_chat=Rate(5, 5.0), overall=Rate(50, 1.0))
# Channels known to be in a server (answers there reply to the question); DMs are not.
GUILD_CHANNELS_KNOWN = 100_000
# While Discord does not answer, turns wait (no model call) but for one look this often.
LOOK_S = 5.0
# Discord's answers to the acknowledgement of an interaction no longer to be answered: 10062
# Unknown interaction (its 3 s are over: a replay after a reconnect), 40060 already
# acknowledged (a replay of one this bot took, or the bot's own defer that Discord took but
# whose answer a 5xx lost, sent again by discord.py: `_submit_acknowledged` tells which).
STALE_INTERACTION = frozenset({10062, 40060})
ACKNOWLEDGED_BEFORE = 40060
# Slash commands whose answer is still to come, by interaction id; Discord lets a deferred
# response be edited for 15 minutes.
INTERACTIONS_KNOWN = 10_000
# How long a command's refusal check (its rate limit is counted in Redis) may hold its defer:
# past it the command is deferred as admitted, and its submit refuses it as before (the count
# is kept per message, so the answer is the same). A Redis that answers slowly, or a pool
# whose connections are all taken, held the acknowledgement past Discord's 3 s.
REFUSAL_CHECK_S = 0.5
# The most of a document's file name said back in ONE_DOCUMENT (a name with its extension).
SHOWN_FILE_NAME_CHARS = 80
MISSING_INTENT = (
    "Discord refused the Message Content intent: switch it on in the developer portal "
    "(your application -> Bot -> Privileged Gateway Intents -> Message Content Intent); "
    "without it Discord gives a bot only the text of DMs, of messages that mention it, and "
    "slash commands"
)

# A slash command's clean-up asks SQL whether its message was answered: tries, and the pause
# between two when the database does not answer.
CLEAN_UP_TRIES = 5
CLEAN_UP_RETRY_S = 1.0
# How long an interaction's deliveries are counted, to tell a replay from the first: its
# token's 15 minutes, after which Discord takes no answer to it anyway.
INTERACTION_S = 900.0
# The longest a stop waits for a session's on_ready that discord.py holds (2 s after the
# last GUILD_CREATE; members are not chunked, the intents leave them out).
READY_WAIT_S = 5.0
# Other gateway close codes that no reconnect can cure: what the operator has to change.
CLOSE_CODES = {
    4004: "Discord closed the connection (4004 Authentication failed): the token was reset "
    "or revoked while Parley ran; set the new one in PARLEY_DISCORD__TOKEN",
    4010: "Discord refused the shard (4010 Invalid shard): each of discord.shard_ids must be "
    "below discord.shard_count",
    4011: "Discord requires this bot to shard (4011 Sharding required): set "
    'discord.shard_count (docs/discord.md, "Scale")',
    4012: "Discord refused the gateway version (4012 Invalid API version): the installed "
    f"discord.py ({discord.__version__}) speaks one Discord no longer takes; upgrade it "
    "(pip install -U 'discord.py>=2.4') and start Parley again",
    4013: "Discord refused the gateway intents (4013 Invalid intents): the installed "
    f"discord.py ({discord.__version__}) asks for intents Discord does not know; upgrade it "
    "(pip install -U 'discord.py>=2.4') and start Parley again",
}
# The application's flags that say the Message Content intent is on (for 100+ servers the
# first, after Discord's review; below, the second: the switch in the developer portal).
MESSAGE_CONTENT_FLAGS = (1 << 18, 1 << 19)


TOKEN_REFUSED = (
    "Discord refused the token (401 Unauthorized): check PARLEY_DISCORD__TOKEN "
    "(developer portal -> your application -> Bot -> Reset Token)"
)


def create(host: AdapterHost, settings: DiscordSettings) -> DiscordAdapter:
    return DiscordAdapter(host, settings)


async def doctor(settings: DiscordSettings) -> str:
    """`parley doctor`: a token is set and Discord takes it (GET /users/@me, the one call of
    `Client.login`; no gateway connection), and the application has the Message Content
    intent on (GET /oauth2/applications/@me): without it `parley run` stops at connect."""
    if settings.token is None:
        raise ConfigError("PARLEY_DISCORD__TOKEN is not set")
    _without_voice()
    client = discord.Client(intents=intents())
    try:
        await client.login(settings.token.get_secret_value())
        application = await client.application_info()
        if not any(application.flags.value & flag for flag in MESSAGE_CONTENT_FLAGS):
            raise AdapterError(MISSING_INTENT.replace("refused", "has not given the bot", 1))
    except discord.LoginFailure:
        raise AdapterError(TOKEN_REFUSED) from None
    except (discord.HTTPException, OSError) as exc:
        raise AdapterError(f"Discord cannot be reached: {exc}") from None
    finally:
        await client.close()
    assert client.user is not None  # set by login
    return f"bot {client.user.name} (id {client.user.id})"


class _ShortReconnect(logging.Filter):
    """discord.py logs each reconnect attempt with the whole traceback of why (an aiohttp
    connection error, every few seconds while Discord cannot be reached): one warning line
    each instead, naming the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Attempting a reconnect"):
            error = record.exc_info[1]
            said = f"{type(error).__name__}: {error}".replace("%", "%%")
            record.msg = f"{record.msg} ({said})"
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _short_reconnects() -> None:
    # A sharded client's reconnects are logged by discord.shard, the one connection's by
    # discord.client.
    for name in ("discord.client", "discord.shard"):
        library_log = logging.getLogger(name)
        if not any(isinstance(f, _ShortReconnect) for f in library_log.filters):
            library_log.addFilter(_ShortReconnect())


def _without_voice() -> None:
    """Before a client is made: no warning that PyNaCl or davey is not installed ("voice will
    NOT be supported"), which discord.py logs when it makes a client; Parley never joins a
    voice channel. `VoiceClient.warn_nacl` is the switch discord.py points to for it
    (Rapptz/discord.py#9220); the library turns both off itself once it warned."""
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False


def intents() -> discord.Intents:
    # Message content is privileged: without it server messages arrive with empty text.
    wanted = discord.Intents.default()
    wanted.message_content = True
    return wanted


class DiscordAdapter:
    platform = PLATFORM

    def __init__(
        self,
        host: AdapterHost,
        settings: DiscordSettings,
        *,
        rates: Rates = DISCORD_RATES,
        store: Store | None = None,
        gate: Gate | None = None,
    ) -> None:
        if (problem := settings.missing()) is not None:
            raise ConfigError(problem)
        self._host = host
        self._intake = host.intake
        self._settings = settings
        self._rates = rates
        # The outbound gate: given (a benchmark watches it), else in the process, and in
        # Redis from __aenter__ where Redis is configured.
        self.gate: Gate = gate or LocalGate(rates)
        self._gate_given = gate is not None
        self._redis: Redis | None = None
        self.client = self._client(settings)
        self.client.event(self.on_message)
        self.client.event(self.on_raw_message_delete)
        self.client.event(self.on_raw_bulk_message_delete)
        self.client.event(self.on_raw_message_edit)
        if isinstance(self.client, discord.AutoShardedClient):
            self.client.event(self.on_shard_connect)
            self.client.event(self.on_shard_ready)
            self.client.event(self.on_shard_disconnect)
            self.client.event(self.on_shard_resumed)
        else:
            self.client.event(self.on_connect)
            self.client.event(self.on_ready)
            self.client.event(self.on_disconnect)
            self.client.event(self.on_resumed)
        # on_message events finished, and backfills: `handled()` and `backfilled()` wait on
        # them (a test, a drain).
        self.messages_handled = 0
        self.backfills_done = 0
        self.deletions_handled = 0
        self.edits_handled = 0
        self._progress = asyncio.Condition()
        self._guild_channels: Lru[bool] = Lru(GUILD_CHANNELS_KNOWN)
        # Channels that refused a reply, commands refused with an ephemeral response
        # (`_refused`): known to every worker where the cache is Redis.
        self._facts = SharedFacts(host.cache)
        self._interactions: Lru[discord.Interaction] = Lru(INTERACTIONS_KNOWN)
        # Refusal checks that outlasted REFUSAL_CHECK_S, kept referenced until they end.
        self._checks: set[asyncio.Future[str | None]] = set()
        # Interactions whose deferred response a delivery refused 40060 ends with the entry
        # another delivery in this process put (`_submit_acknowledged`, `_end_acknowledged`).
        self._relied_on: set[str] = set()
        self._thread_names: Lru[str] = Lru(THREAD_NAMES_KNOWN)
        self.tree = commands.build_tree(
            self.client, host.router.commands, self.on_command, self.on_menu
        )
        # The history store, for the backfill and withdrawals: given (tests), else the host's.
        self._store: Store = store or host.store
        # The backfill of each shard (None: the one connection), one at a time.
        self._backfills: dict[int | None, asyncio.Task[None]] = {}
        # Each channel's shard, learnt by the backfills (a channel fetched once, not per shard).
        self._channel_shards = ChannelShards()
        # Where each shard's next backfill starts (Backfill's `marks`): each conversation's
        # newest recorded message as its gap began, read before the gateway connects (every
        # shard's first session) and when a shard's connection drops (`_gaps`; dropped when
        # the session resumes: Discord replays the gap itself). A backfill's marks are kept
        # until it ends (`_reading`): one cancelled by a newer session, or failed, is read
        # again from the same. So a message that arrives live before the backfill reads
        # does not move its start past what was sent while the bot was away.
        self._start_marks: asyncio.Task[Marks | None] | None = None
        self._gaps: dict[int | None, asyncio.Task[Marks | None]] = {}
        self._reading: dict[int | None, asyncio.Task[Marks | None] | None] = {}
        self._backfilled: set[int | None] = set()  # shards whose backfill ended once
        # Deferred commands waiting for their turn to settle (`_end_unanswered`).
        self._deferred: set[asyncio.Task[None]] = set()
        # Set by `__aexit__`: a session's ready event that discord.py runs after it starts no
        # backfill (against a client about to close, and after its tasks were cancelled).
        self._stopping = False
        # Sessions (shards; None: the one connection) whose READY came and whose on_ready
        # discord.py still holds (`__aexit__` waits for them).
        self._ready_due: set[int | None] = set()
        # Discord not answering answers (PlatformAway): turns wait for it.
        self._away = PlatformWatch(
            PLATFORM, self._look, service="Discord", look_s=LOOK_S, logger=log
        )

    @staticmethod
    def _client(settings: DiscordSettings) -> discord.Client:
        _without_voice()
        _short_reconnects()
        if settings.shard_count is not None:
            if settings.shard_ids is None:  # every shard in this process
                return discord.AutoShardedClient(
                    intents=intents(), shard_count=settings.shard_count
                )
            return discord.AutoShardedClient(
                intents=intents(), shard_ids=settings.shard_ids, shard_count=settings.shard_count
            )
        return discord.Client(intents=intents())

    @property
    def me(self) -> int:
        if self.client.user is None:
            raise RuntimeError("DiscordAdapter used before __aenter__")
        return self.client.user.id

    async def __aenter__(self) -> Self:
        assert self._settings.token is not None
        try:
            await self.client.login(self._settings.token.get_secret_value())
        except discord.LoginFailure:
            await self.client.close()
            raise AdapterError(TOKEN_REFUSED) from None
        except (discord.HTTPException, OSError, aiohttp.ClientError) as exc:
            await self.client.close()
            raise AdapterError(f"Discord cannot be reached: {exc}") from None
        self._share_limits()
        try:
            await commands.sync(self.tree, self._settings.guild_ids)
        except discord.HTTPException as exc:  # 403: invited without applications.commands
            await self._close()
            raise AdapterError(f"Discord refused the slash commands: {exc}") from None
        except (OSError, aiohttp.ClientError) as exc:  # the connection dropped since login
            await self._close()
            raise AdapterError(f"Discord cannot be reached: {exc}") from None
        if self._settings.backfill_hours > 0:  # before any message can arrive live
            self._start_marks = asyncio.create_task(self._recorded_now())
            await asyncio.wait([self._start_marks])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        tasks: list[asyncio.Future[Any]] = [*self._backfills.values(), *self._deferred]
        tasks += [*self._gaps.values(), *self._checks]
        if self._start_marks is not None:
            tasks.append(self._start_marks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._until_sessions_ready()
        await self._close()

    async def _until_sessions_ready(self) -> None:
        """discord.py holds a new session's on_ready until the servers' GUILD_CREATE stream
        ends (`guild_ready_timeout`, 2 s), in a task of its own that `close()` does not end
        and no public call does: closed meanwhile, the client had it dispatch on_ready after
        the close, where scheduling the event fails (an AttributeError in that task, the
        event's coroutine never awaited). A stop that soon after a READY waits for it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_WAIT_S), self._progress:
                await self._progress.wait_for(lambda: not self._ready_due)

    async def _close(self) -> None:
        await self.client.close()
        if self._redis is not None:
            await self._redis.aclose()

    def _share_limits(self) -> None:
        """Discord's limits are per bot: with Redis, every process of the bot (the shards of
        a sharded one) keeps them together, the global 50 requests a second included."""
        if self._gate_given:
            return
        self._redis = client_for(self._host.settings.redis)
        if self._redis is not None:
            prefix = keys.platform_gate(self._host.settings.redis.key_prefix, "discord", self.me)
            self.gate = RedisGate(
                self._redis, self._rates, prefix=prefix,
                retry_after_failure_s=self._host.settings.redis.retry_after_failure_s,
            )  # fmt: skip

    async def run(self) -> None:
        try:
            await self.client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            raise AdapterError(MISSING_INTENT) from None
        except discord.LoginFailure:
            raise AdapterError("Discord refused the token: check PARLEY_DISCORD__TOKEN") from None
        except discord.ConnectionClosed as exc:
            if exc.code not in CLOSE_CODES:
                raise
            raise AdapterError(CLOSE_CODES[exc.code]) from None

    async def handled(self, count: int) -> None:
        """Wait until `count` message events have been handled (recorded, refused or ignored)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.messages_handled >= count)

    async def backfilled(self, count: int) -> None:
        """Wait until `count` backfills have ended (one per new gateway session and shard)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.backfills_done >= count)

    async def settled(self) -> None:
        """Wait until every slash command's clean-up has run (a test, a drain)."""
        while self._deferred:
            await asyncio.gather(*self._deferred, return_exceptions=True)

    async def deleted(self, count: int) -> None:
        """Wait until `count` deletion events have been handled."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.deletions_handled >= count)

    async def edited(self, count: int) -> None:
        """Wait until `count` edit events have been handled."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.edits_handled >= count)

    async def idle(self) -> None:
        """Wait until every turn in this process is answered and every notice sent."""
        await self._intake.idle()

    async def on_message(self, message: discord.Message) -> None:
        """discord.py's event (its own task): hand the message to the core."""
        try:
            await self._take(message, translate(message, self.me))
        except Exception:  # one bad message must not end the event loop's handling of others
            log.exception("message %s could not be handled; skipped", message.id)
        finally:
            await self._count_handled()

    async def _take_read_back(self, message: discord.Message, action: Action) -> None:
        """A message a backfill read back: taken as a live one, but a refusal is not said
        (the blocked sender's message is read again by every backfill that covers it)."""
        await self._take(message, action, quiet=True)

    async def _take(self, message: discord.Message, action: Action, *, quiet: bool = False) -> None:
        if message.guild is not None:
            self._guild_channels.put(message.channel.id, True)
        # A thread only for a message the bot takes: a blocked sender, or one over the rate
        # limit, must not open public threads the bot names after their text (a helper's
        # review: one per message, in a loop). Theirs is refused, or limited, in the channel.
        # A question with a document opens one too: its answer was left in the channel.
        if (
            isinstance(action, Submit | Fetch)
            and message.channel.id in self._settings.auto_thread
            and await self._intake.admits(action.incoming)
        ):
            action = await self._in_new_thread(message, action)
        await self.act(action, quiet=quiet)

    async def on_connect(self) -> None:
        """A new session's READY (discord.py's event): its on_ready follows, held."""
        self._ready_due.add(None)

    async def on_shard_connect(self, shard_id: int) -> None:
        self._ready_due.add(shard_id)

    async def on_ready(self) -> None:
        """A new gateway session (a start, or a reconnect that could not resume)."""
        await self._session_ready(None)
        self._start_backfill(None)

    async def on_shard_ready(self, shard_id: int) -> None:
        await self._session_ready(shard_id)
        self._start_backfill(shard_id)

    async def _session_ready(self, shard_id: int | None) -> None:
        async with self._progress:
            self._ready_due.discard(shard_id)
            self._progress.notify_all()

    async def on_disconnect(self) -> None:
        """The connection dropped (discord.py's event): a gap may begin."""
        self._gap_begins(None)

    async def on_shard_disconnect(self, shard_id: int) -> None:
        self._gap_begins(shard_id)

    async def on_resumed(self) -> None:
        """The session resumed: Discord replays what was missed, the gap is closed."""
        self._gaps.pop(None, None)

    async def on_shard_resumed(self, shard_id: int) -> None:
        self._gaps.pop(shard_id, None)

    def _gap_begins(self, shard_id: int | None) -> None:
        # Kept when one is there already: the gap began at its first drop.
        if not self._stopping and self._settings.backfill_hours > 0 and shard_id not in self._gaps:
            self._gaps[shard_id] = asyncio.create_task(self._recorded_now())

    @property
    def _backfill_hours(self) -> float:
        """How far back a backfill reads: `backfill_hours`, but never past the retention
        period (conversation.retention_days): a message older than that may have been pruned
        with its answer, and read back it would be recorded as new and answered again."""
        days = self._host.settings.conversation.retention_days
        hours = self._settings.backfill_hours
        return min(hours, days * 24.0) if days > 0 else hours

    async def _recorded_now(self) -> Marks | None:
        since = discord.utils.utcnow() - timedelta(hours=self._backfill_hours)
        try:
            return await self._store.last_platform_message_ids(PLATFORM, since)
        except StorageError as exc:
            log.warning("backfill: where it starts was not read (%s): from the newest", exc)
            return None

    def _start_backfill(self, shard_id: int | None) -> None:
        if self._stopping or self._settings.backfill_hours == 0:
            return
        running = self._backfills.get(shard_id)
        if running is not None:  # a newer session: read again
            running.cancel()
        marks = self._gaps.pop(shard_id, None)
        unfinished = self._reading.get(shard_id)
        if unfinished is not None:  # a backfill that did not end: from its (older) marks
            marks = unfinished
        if marks is None and shard_id not in self._backfilled:
            marks = self._start_marks  # this shard's first session
        self._reading[shard_id] = marks
        backfill = Backfill(
            self.client,
            self._store,
            self.gate,
            hours=self._backfill_hours,
            auto_thread=self._settings.auto_thread,
            me=self.me,
            take=self._take_read_back,
            roles_block=bool(self._settings.access.blocked_roles),
            roles_matter=bool(self._settings.access.allowed_roles),
            shards=self._channel_shards,
        )
        self._backfills[shard_id] = asyncio.create_task(
            self._backfill(backfill, shard_id, marks), name=f"discord backfill {shard_id}"
        )

    async def _backfill(
        self,
        backfill: Backfill,
        shard_id: int | None,
        marks: asyncio.Task[Marks | None] | None,
    ) -> None:
        try:
            await backfill.run(shard_id, await marks if marks is not None else None)
        except asyncio.CancelledError:
            raise
        except Unread as exc:  # Discord failed to give some channels, every time
            log.warning(
                "backfill of shard %s: %s; read again at the next new session", shard_id, exc
            )
        except Exception:  # the next new session tries again; live messages go on
            log.exception("backfill of shard %s failed", shard_id)
        else:  # read past the gap: the next one begins at the next drop
            self._backfilled.add(shard_id)
            if self._reading.get(shard_id) is marks:
                del self._reading[shard_id]
        async with self._progress:
            self.backfills_done += 1
            self._progress.notify_all()

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        """A deleted message whose turn has not run is not answered."""
        await self._withdraw(payload.channel_id, [payload.message_id])

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        """A message its sender edited: its new text replaces the recorded one, never
        answered again (Intake.edit). The raw event, as for deletions: the message need not
        be in discord.py's cache. An update that is no edit by its sender (an embed Discord
        unfurled, a pin: no edited_timestamp) changes nothing."""
        try:
            if payload.data.get("edited_timestamp") is None:
                return
            action = edit_of(payload.message, self.me)
            if isinstance(action, Edit):
                named = await self._thread_named_after(payload.message, action)
                replaced = await self._intake.edit(
                    action.incoming,
                    observed=action.observed,
                    edited_at=action.edited_at,
                    document=action.document,
                )
                if replaced and named is not None:
                    new_name = _thread_named(action.incoming.text, action.document)
                    await self._rename_thread(named, new_name)
        except Exception:  # one bad event must not end the handling of others
            log.exception("message %s: edit not recorded", payload.message_id)
        finally:
            async with self._progress:
                self.edits_handled += 1
                self._progress.notify_all()

    async def _thread_named_after(
        self, message: discord.Message, edit: Edit
    ) -> discord.Thread | None:
        """The thread the bot opened for an auto_thread question (`message`), where it still
        has the name the bot gave it (`thread_name` of the question as recorded, before this
        edit, or the name this process last gave it: a rename given up leaves that one): a
        name a member gave it is theirs. None for any other message."""
        if edit.observed or message.channel.id not in self._settings.auto_thread:
            return None
        recorded = await self._store.message_by_key(edit.incoming.idempotency_key)
        if recorded is None:
            return None
        thread = message.thread  # a thread from a message has the message's id
        if thread is None:
            try:
                async with self.gate.slot(str(message.channel.id), group=False):
                    found = await self.client.fetch_channel(message.id)
            except discord.HTTPException:  # no thread (none opened: no permission)
                return None
            thread = found if isinstance(found, discord.Thread) else None
        if thread is None or thread.owner_id != self.me:
            return None
        given = [thread_name(recorded.content), self._thread_names.get(thread.id)]
        # A document sent with no question: its thread has the document's name, and what
        # was recorded asks for a summary of it. Compared with that alone, a thread another
        # worker opened (or one opened before a restart) was never renamed.
        alone = thread_name(document_question("", edit.document))
        if edit.document and given[0] == alone:
            given.append(thread_name(edit.document))
        return thread if thread.name in given else None

    async def _rename_thread(self, thread: discord.Thread, name: str) -> None:
        """The thread named after the question's new text (`thread_name`: Discord's 100
        characters). Discord lets a channel be renamed twice per 10 minutes: a rename it
        holds back longer than RENAME_WAIT_S is given up, as is one it refuses."""
        if thread.name == name:
            return
        try:
            async with asyncio.timeout(RENAME_WAIT_S):
                async with self.gate.slot(str(thread.id), group=False):
                    await thread.edit(name=name)
            self._thread_names.put(thread.id, name)
        except (TimeoutError, discord.HTTPException) as exc:
            log.warning("thread %s: not renamed after its question (%s)", thread.id,
                        type(exc).__name__)  # fmt: skip

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._withdraw(payload.channel_id, sorted(payload.message_ids))

    async def _withdraw(self, channel_id: int, message_ids: list[int]) -> None:
        try:
            await self._withdraw_each(channel_id, message_ids)
        finally:
            async with self._progress:
                self.deletions_handled += 1
                self._progress.notify_all()

    async def _withdraw_each(self, channel_id: int, message_ids: list[int]) -> None:
        for message_id in message_ids:
            key = message_key(message_id)
            try:
                # Marked before it is looked for: a message recorded after this looked (its
                # document still being read) is withdrawn as it is recorded.
                await self._intake.mark_deleted(key)
                # Answered or kept already, or the bot's answer (recorded under the key of its
                # first message, `answer_key`): its text leaves the history and the context.
                withdrawn = await self._withdraw_one(channel_id, message_id)
                if not withdrawn and await self._intake.redact(key, marked=True):
                    log.info("message %s redacted: deleted", message_id)
            except Exception:
                log.exception("message %s: deletion not recorded", message_id)

    async def _withdraw_one(self, channel_id: int, message_id: int) -> bool:
        # An auto_thread mention is recorded in the thread it opened, which has its id.
        for chat in (channel_id, message_id):
            key = ConversationKey(PLATFORM, str(chat))
            if await self._store.withdraw(key, str(message_id)):
                log.info("message %s withdrawn: deleted before its turn", message_id)
                return True
        return False

    async def _in_new_thread(
        self, message: discord.Message, action: Submit | Fetch
    ) -> Submit | Fetch:
        """auto_thread: a thread named after the question (a document sent alone: after its
        name) holds the conversation from here.
        A thread that cannot be opened (no permission) leaves the answer in the channel. A
        message that opened one already (read back by a backfill, or opened by another worker
        at the same moment: Discord's 160004) keeps its thread."""
        thread: discord.Thread | None = message.thread
        document = action.attachment.filename if isinstance(action, Fetch) else ""
        if thread is None:
            try:
                async with self.gate.slot(str(message.channel.id), group=False):
                    name = _thread_named(action.incoming.text, document)
                    thread = await message.create_thread(name=name)
                # The name it gave; not that of a thread found (a member may have renamed it).
                self._thread_names.put(thread.id, thread.name)
            except discord.HTTPException as exc:
                thread = await self._thread_opened_by_another(message, exc)
                if thread is None:
                    log.warning("channel %s: no thread opened (%s)", message.channel.id, exc)
                    return action
        self._guild_channels.put(thread.id, True)
        key = ConversationKey(PLATFORM, str(thread.id))
        moved = dataclasses.replace(action.incoming, key=key, scopes=scopes_of(thread))
        if isinstance(action, Fetch):
            return dataclasses.replace(action, incoming=moved)
        return Submit(moved)

    async def _thread_opened_by_another(
        self, message: discord.Message, exc: discord.HTTPException
    ) -> discord.Thread | None:
        """The thread another worker opened on `message` a moment ago (Discord refuses a
        second one with 160004; a thread started from a message has the message's id); None
        for any other refusal. Two workers on one shard (a rolling deploy) left that thread
        empty and answered in the channel (a helper's review)."""
        if exc.code != THREAD_ALREADY_CREATED:
            return None
        try:
            async with self.gate.slot(str(message.channel.id), group=False):
                found = await self.client.fetch_channel(message.id)
        except discord.HTTPException:
            return None
        return found if isinstance(found, discord.Thread) else None

    async def on_command(self, interaction: discord.Interaction, name: str, text: str) -> None:
        """A slash command (the CommandTree's task): a refused sender's is answered to them
        alone (`_refused`); any other is deferred first, within Discord's 3 s."""
        try:
            incoming = command_incoming(interaction, name, text)
            if await self._refused(interaction, incoming, incoming):
                return
            acknowledged = await _deferred(interaction)
            if acknowledged is None:
                return
            replayed = await self._replayed(interaction)
            if not acknowledged:  # 40060: a replay, or this defer's own, retried after a 5xx
                await self._submit_acknowledged(interaction, incoming, replayed=replayed)
                return
            await self._hold(interaction)
            recorded = await self._intake.submit(incoming, quiet=replayed)
            self._end_acknowledged(interaction, recorded, replayed=replayed)
        except Exception:
            log.exception("slash command %s could not be handled; skipped", interaction.id)
        finally:
            await self._count_handled()

    async def on_menu(
        self, interaction: discord.Interaction, name: str, target: discord.Message
    ) -> None:
        """A message context-menu command: `name` of the registry run on `target` (its text,
        or for summarize the conversation from it on); a refused sender's is answered to them
        alone, any other deferred first, like a slash command."""
        try:
            about = content_of(target)  # a forward's: the text of the message it carries
            asked = menu_incoming(interaction, name, target, "")
            # Before anything is read or said: a blocked one was told the message has no
            # text, not that they may not use the bot, and the history (up to 4 reads of 100
            # messages) was read for a blocked or rate-limited one (a helper's review).
            kept = menu_incoming(interaction, name, target, about)  # refused: recorded as ever
            if await self._refused(interaction, asked, kept):
                return
            acknowledged = await _deferred(interaction)
            if acknowledged is None:
                return
            replayed = await self._replayed(interaction)
            if acknowledged:
                await self._hold(interaction)
            if name == "translate" and not about.strip():
                if not self._tells(interaction, acknowledged, replayed):
                    return
                self._intake.notify(asked, commands.NO_TEXT)
                self._end_unanswered(interaction, None)
                return
            if name == "summarize":
                limit = self._host.settings.skills.max_paste_chars
                try:
                    about = await commands.conversation_from(
                        target, self.gate, max_chars=limit, me=self.me
                    )
                except (discord.HTTPException, OSError, aiohttp.ClientError) as exc:
                    # No Read Message History here (403), or Discord failing a moment (a 503,
                    # which discord.py does not retry; a 429 storm; no connection): one
                    # sentence in place of the deferred response. A failure left it
                    # "thinking..." until Discord gave up, with a traceback in the log.
                    forbidden = isinstance(exc, discord.Forbidden)
                    log.warning(
                        "menu command %s: the channel's history could not be read (%s)",
                        interaction.id, _read_failure(exc),
                    )  # fmt: skip
                    if not self._tells(interaction, acknowledged, replayed):
                        return
                    sentence = commands.NO_HISTORY if forbidden else phrases.GENERIC
                    self._intake.notify(asked, sentence)
                    self._end_unanswered(interaction, None)
                    return
            incoming = menu_incoming(interaction, name, target, about)
            if not acknowledged:  # 40060: a replay, or this defer's own, retried after a 5xx
                await self._submit_acknowledged(interaction, incoming, replayed=replayed)
                return
            recorded = await self._intake.submit(incoming, quiet=replayed)
            self._end_acknowledged(interaction, recorded, replayed=replayed)
        except Exception:
            log.exception("menu command %s could not be handled; skipped", interaction.id)
        finally:
            await self._count_handled()

    async def _refused(
        self, interaction: discord.Interaction, asked: Incoming, recorded: Incoming
    ) -> bool:
        """Whether the command's sender is refused (`asked`: not allowed, or over the rate
        limit, counted once): then the refusal is the interaction's response, ephemeral
        (seen by the sender alone, each time: it costs the channel nothing), in place of a
        deferred response. That one, once refused (or, over the rate limit, after the one
        sentence a window), was deleted through the channel's gate: a member flooding
        refused commands held back every other member's answers in that channel, and their
        "thinking..." showed there. `recorded` then goes through the door as any refused
        message (quiet): over the rate limit a stub, whose turn's sentence is this response
        (`deliver` says it no more); not allowed, nothing."""
        sentence = await self._refusal_in_time(asked)
        if sentence is None:
            return False
        told = await _told_alone(interaction, phrases.say(sentence, asked.user.language))
        if told is None:
            return True
        replayed = await self._replayed(interaction)
        if told or not replayed:  # said by this delivery (40060 unseen: its answer was lost)
            await self._facts.told(str(interaction.id))
        else:
            _replay_skipped(interaction)
        # A repeat is recorded once (the manager's idempotency key).
        await self._intake.submit(recorded, quiet=True)
        return True

    async def _refusal_in_time(self, asked: Incoming) -> str | None:
        """`Intake.refusal`, or None (admitted) where it takes longer than REFUSAL_CHECK_S:
        the check goes on, and counts the message once, for the submit that follows."""
        check = asyncio.ensure_future(self._intake.refusal(asked))
        done, _ = await asyncio.wait({check}, timeout=REFUSAL_CHECK_S)
        if check in done:
            return check.result()
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)
        check.add_done_callback(_checked)
        return None

    async def _replayed(self, interaction: discord.Interaction) -> bool:
        """Whether a worker saw this interaction before (a replay); this delivery counted."""
        return await self._intake.seen_before(PLATFORM, str(interaction.id), INTERACTION_S)

    def _tells(self, interaction: discord.Interaction, acknowledged: bool, replayed: bool) -> bool:
        """Whether a command's notice (not a record) is to be said: not for a replay, whose
        first delivery said it; yes for this bot's own lost acknowledgement (`acknowledged`
        False, never seen before), through the interaction, as for any other command. Nor
        where this delivery deferred it but another counted it first (`_end_acknowledged`)."""
        if acknowledged:
            if replayed:
                self._let_go(interaction)
            return not replayed
        if replayed:
            _replay_skipped(interaction)
            return False
        self._interactions.put(str(interaction.id), interaction)
        return True

    async def _submit_acknowledged(
        self, interaction: discord.Interaction, incoming: Incoming, *, replayed: bool
    ) -> None:
        """A command whose defer Discord says was acknowledged already (40060).
        Recorded before: a replay, one line and nothing more. Never recorded: the
        acknowledgement was this bot's own (discord.py sent the defer again after a 5xx whose
        answer was lost), and the command is answered as any other; it was skipped, and its
        user saw "thinking..." until Discord gave up. A refusal is said where no worker saw
        the interaction before (`replayed` False: the lost acknowledgement's own command; it
        was refused without a word), not for a replay of a command refused, which said it."""
        key = str(interaction.id)
        held = self._interactions.get(key)  # its first delivery's, still running
        known = held is not None
        if not known:  # before the turn can look for it
            await self._hold(interaction)
        else:  # recorded here first, this delivery ends it with the entry it found
            self._relied_on.add(key)
        recorded = await self._intake.submit(incoming, quiet=replayed)
        if recorded is not None and recorded.is_new:
            self._end_unanswered(held or interaction, recorded)
            return
        self._relied_on.discard(key)
        if recorded is None and not replayed:  # refused, and the refusal said through it
            self._end_unanswered(interaction, None)
            return
        if not known and self._interactions.get(key) is interaction:
            self._interactions.discard(key)
        _replay_skipped(interaction)

    def _end_acknowledged(
        self, interaction: discord.Interaction, recorded: Recorded | None, *, replayed: bool
    ) -> None:
        """The end of a command this delivery deferred. Recorded by another delivery first
        (the interaction delivered to another worker too, whose defer Discord refused 40060:
        two processes during a rolling deploy), it is that delivery's to answer and end:
        this one lets go of the interaction. Its clean-up deleted the deferred response once
        the command was answered, its own interaction unused by a turn here: the answer the
        other worker's turn had written in it. Refused, and counted by another delivery
        first (`replayed`: its defer was 40060, this one's answer slower to come back), the
        refusal is that delivery's to say, as for this bot's own lost acknowledgement, and
        this one's (quiet) lets go too: its clean-up deleted the refusal said there."""
        if (recorded is not None and not recorded.is_new) or (recorded is None and replayed):
            self._let_go(interaction)
            return
        self._end_unanswered(interaction, recorded)

    def _let_go(self, interaction: discord.Interaction) -> None:
        """This delivery's interaction, left to another delivery of it to end; unless that
        delivery is in this process, and ends it with this entry (`_relied_on`)."""
        key = str(interaction.id)
        if key not in self._relied_on and self._interactions.get(key) is interaction:
            self._interactions.discard(key)

    def _end_unanswered(self, interaction: discord.Interaction, recorded: Recorded | None) -> None:
        """Once the command's turn (or, refused, its notice) is over, a deferred response that
        nothing answered (an admin-only command's refusal told already; over the rate limit
        after the one sentence saying so, where another message of its sender was counted
        between `_refused` and submit) is deleted: else Discord shows "thinking" until "The
        application did not respond"."""
        task = asyncio.create_task(self._end_if_unanswered(interaction, recorded))
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)
        task.add_done_callback(lambda _: self._relied_on.discard(str(interaction.id)))
        task.add_done_callback(_report_failure)

    async def _end_if_unanswered(
        self, interaction: discord.Interaction, recorded: Recorded | None
    ) -> None:
        if recorded is not None:
            # Until the message is answered, not only until this process has no turn for
            # it: a turn that met another run's unfinished answer ends at once and runs
            # again later, and the deferred response was deleted before its answer (which
            # then went out as a plain message; a helper's review).
            for attempt in range(CLEAN_UP_TRIES):
                try:
                    answered = await self._intake.wait_until_answered(recorded)
                    break
                except StorageError as exc:  # the database blinked: asked again shortly
                    if attempt == CLEAN_UP_TRIES - 1:
                        log.warning(
                            "interaction %s: not known whether it was answered (%s); its "
                            "deferred response is left", interaction.id, exc,
                        )  # fmt: skip
                        return
                    await asyncio.sleep(CLEAN_UP_RETRY_S)
            if not answered:
                return  # not yet: a later turn may still answer in the deferred response
        else:
            await self._intake.aclose()  # the notices in flight, the refusal's among them
        key = str(interaction.id)
        if self._interactions.get(key) is not interaction:
            return  # answered (deliver took it)
        self._interactions.discard(key)
        if recorded is not None and await self._facts.was_taken(key):
            return  # answered in it by another worker, through its token
        channel = interaction.channel_id or 0
        try:
            await stream.gated(self.gate, channel, interaction.delete_original_response)
        except Exception as exc:  # the user sees "did not respond"; nothing else is lost
            log.info("interaction %s: deferred response not removed: %s", key, exc)

    async def _hold(self, interaction: discord.Interaction) -> None:
        """A command deferred here: its interaction for this worker's turn, and its token for
        any worker's (`_by_token`: the turn runs where the conversation's lease is)."""
        key = str(interaction.id)
        self._interactions.put(key, interaction)
        await self._facts.deferred(key, interaction.token, interaction.expires_at)

    async def _count_handled(self) -> None:
        async with self._progress:
            self.messages_handled += 1
            self._progress.notify_all()

    async def act(self, action: Action, *, quiet: bool = False) -> None:
        """`quiet`: read back by a backfill, a refusal is not said (`Intake.submit`)."""
        if isinstance(action, Submit):
            await self._intake.submit(action.incoming, quiet=quiet)
        elif isinstance(action, Observe):
            await self._intake.observe(action.incoming)
        elif isinstance(action, Fetch):
            document = _document(action.attachment)
            recorded = await self._intake.submit_document(action.incoming, document, quiet=quiet)
            if action.skipped and recorded is not None and recorded.is_new:
                if recorded.withdrawn:  # deleted by its sender while it was read: not a word
                    return
                # Said once (not again when a backfill reads the message back).
                skipped = ", ".join(
                    phrases.said_back(n, SHOWN_FILE_NAME_CHARS) for n in action.skipped
                )
                read = phrases.said_back(document.name, SHOWN_FILE_NAME_CHARS)
                self._intake.notify(
                    action.incoming, phrases.ONE_DOCUMENT, read=read, skipped=skipped
                )
        elif isinstance(action, Notice):
            mb = self._host.settings.documents.max_bytes // 10**6
            self._intake.notice(action.incoming, action.sentence, mb=mb)
        elif isinstance(action, Ignore):
            log.debug("message ignored: %s", action.reason)

    def edits_marked(self) -> bool:
        """TellsEdits: a message's edit event may come before its on_message is done (its
        document still read)."""
        return True

    def answer_key(self, ref: str | int) -> str | None:
        """The key an answer is recorded under (TellsDeletions): its first message's, the
        key a deletion event redacts by (`_withdraw_each`). A slash command's deferred
        response (stream.ORIGINAL) has no message id the bot knows: none."""
        return message_key(int(ref)) if ref != stream.ORIGINAL else None

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        channel_id = int(key.chat_id)
        channel = self.client.get_partial_messageable(channel_id)
        interaction: stream.Responding | None = None
        if reply_to and (held := self._interactions.get(reply_to)) is not None:
            self._interactions.discard(reply_to)
            interaction = held
        reference = None
        if interaction is None and reply_to:
            answering = await self._answering(channel_id, reply_to)
            if answering.told:
                # A command over the rate limit, told so by its ephemeral response
                # (`_refused`, on any worker): its turn's sentence was that response, not to
                # be said again in the channel.
                async for _ in chunks:
                    pass
                return
            interaction = await self._by_token(reply_to, channel_id, answering.token)
            if interaction is None and answering.replies and not answering.command:
                reference = discord.MessageReference(
                    message_id=int(reply_to), channel_id=channel_id, fail_if_not_exists=False
                )
        try:
            await stream.play(
                channel,
                self.gate,
                chunks,
                interval_s=self._settings.stream_interval_s,
                reply_to=reference,
                interaction=interaction,
                link_previews=self._settings.link_previews,
                on_reply_refused=lambda: self._facts.reply_refused(self.me, channel_id),
            )
        except PlatformAway as exc:  # a slash command's is a refusal (stream._as_refusal)
            # Not recorded as shown: the turn waits, and is made again and finished in the
            # messages it showed (if any) once Discord answers (adapters.kit.away).
            await self._away.away(key, exc)
            return
        if interaction is None:  # a refusal of a slash command's answer says nothing of it
            self._away.shown(key)

    async def _answering(self, channel_id: int, reply_to: str) -> _Answering:
        """What the cache knows of `reply_to`, where this worker does not hold it as an
        interaction: whether its answer was said already, to its sender alone (a refused
        command's ephemeral response); the token of a command another worker deferred
        (or this one, before a restart), and whether it is a command at all (its token's
        time over: no message of that id to reply to); and whether an answer replies to its
        question: in a server, who asked what (a DM has one asker); not where Discord refused
        a reply lately (no Read Message History), each answer a refused call first, a 403
        Discord counts against the host. Every fact asked of the cache at once (Redis: one
        round trip's wait)."""
        facts = self._facts
        told, token = facts.was_told(reply_to), facts.token(reply_to)
        command = facts.was_deferred(reply_to)
        if not self._in_a_server(channel_id):
            return _Answering(*await asyncio.gather(told, token, command), replies=False)
        replies = facts.replies_in(self.me, channel_id)
        return _Answering(*await asyncio.gather(told, token, command, replies))

    async def _by_token(
        self, reply_to: str, channel_id: int, token: str | None
    ) -> stream.WebhookResponse | None:
        """The deferred response of a command another worker holds, through its token's
        webhook; marked answered so (the holder's clean-up leaves it). None without a token
        (no command, or its time over) or before the client knows its application."""
        application = self.client.application_id
        if token is None or application is None:
            return None
        await self._facts.taken(reply_to)
        webhook = discord.Webhook.partial(application, token, client=self.client)
        return stream.WebhookResponse(int(reply_to), channel_id, webhook)

    def _in_a_server(self, channel_id: int) -> bool:
        """Whether the channel is a server's (seen so here, or in discord.py's cache of this
        process's servers): a turn run after a restart, or by the sweep, has seen no message
        of it in this process, and its answer went out without replying to the question."""
        if channel_id in self._guild_channels:
            return True
        cached = self.client.get_channel(channel_id)
        return isinstance(cached, discord.abc.GuildChannel | discord.Thread)

    async def ensure_reachable(self, key: ConversationKey) -> None:
        """While Discord does not answer, a turn waits without asking the model: one look
        (the application's own record) every LOOK_S (bot.conversation.sink.Reachable). A
        slash command's turn cannot wait (its deferred response goes when the turn settles):
        it runs, and Discord not answering its answer is a refusal."""
        if self._away.down and self._commanded(key):
            return
        await self._away.ensure_reachable()

    def _commanded(self, key: ConversationKey) -> bool:
        """Whether a slash command waits for its answer in this conversation's channel."""
        if not key.chat_id.isdigit():
            return False
        channel = int(key.chat_id)
        return any(i.channel_id == channel for i in self._interactions.values())

    async def _look(self) -> None:
        await self.client.application_info()

    async def is_admin(self, incoming: Incoming) -> bool:
        return incoming.extras.get("manage_guild") is True


@dataclasses.dataclass(frozen=True, slots=True)
class _Answering:
    """What `deliver` needs to know of an answer's `reply_to` that it does not hold."""

    told: bool
    token: str | None = dataclasses.field(repr=False)  # a secret: never in a log line
    command: bool
    replies: bool


def _document(attachment: discord.Attachment) -> DocumentSource:
    name = attachment.filename or "document"
    return DocumentSource(name, attachment.content_type or "", attachment.size, attachment.read)


def _report_failure(task: asyncio.Task[None]) -> None:
    """A background task's failure, logged when it happens (not "Task exception was never
    retrieved" at exit, or nothing)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)


async def _deferred(interaction: discord.Interaction) -> bool | None:
    """True: `interaction` is acknowledged (deferred) now. False: Discord says it was
    acknowledged already (40060): a replay of one this bot took, or this very defer, taken
    by Discord but its answer lost (a 5xx) and sent again by discord.py; the caller tells
    which. None: where it was already answered here or Discord no longer knows it (10062, a
    replay past its 3 s): one line, and nothing more is sent for it; another answer would be
    the command's second."""
    return await _acknowledged(interaction, interaction.response.defer)


def _checked(check: asyncio.Future[str | None]) -> None:
    """A refusal check that outlasted its wait ended: nothing waits for its answer."""
    if not check.cancelled() and check.exception() is not None:
        log.warning("refusal check failed: %s", type(check.exception()).__name__)


async def _told_alone(interaction: discord.Interaction, text: str) -> bool | None:
    """`text` as the interaction's response, ephemeral: seen by its user alone, no message
    in the channel and none to delete. True, False, None: as for `_deferred`."""
    return await _acknowledged(
        interaction, functools.partial(interaction.response.send_message, text, ephemeral=True)
    )


async def _acknowledged(
    interaction: discord.Interaction, respond: Callable[[], Awaitable[object]]
) -> bool | None:
    try:
        await respond()
    except discord.InteractionResponded:
        log.info("interaction %s: already answered; skipped", interaction.id)
        return None
    except discord.HTTPException as exc:
        if exc.code not in STALE_INTERACTION:
            raise
        if exc.code == ACKNOWLEDGED_BEFORE:
            return False
        log.info(
            "interaction %s: Discord refused its acknowledgement (%s %s); skipped",
            interaction.id, exc.status, exc.code,
        )  # fmt: skip
        return None
    return True


def _thread_named(question: str, document: str = "") -> str:
    """The name of an auto_thread: its question's first line, or for a document sent with
    no question, the document's name (as it is opened, and as an edit renames it: an edit
    that took the question out named it "?")."""
    return thread_name(question if question.strip() or not document else document)


def _read_failure(exc: Exception) -> str:
    """A failed read in one log line: Discord's status and code for a refusal (403 50001),
    its status for a failure (503 Service Unavailable), else the error's name."""
    if isinstance(exc, discord.Forbidden):
        return f"{exc.status} {exc.code}"
    if isinstance(exc, discord.HTTPException):
        return f"{exc.status} {exc.response.reason}"
    return type(exc).__name__


def _replay_skipped(interaction: discord.Interaction) -> None:
    log.info(
        "interaction %s: Discord refused its acknowledgement (400 %s); skipped",
        interaction.id, ACKNOWLEDGED_BEFORE,
    )  # fmt: skip
