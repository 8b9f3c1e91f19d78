"""The Discord adapter: holds a `discord.Client` (it is not one), translates messages into
`Incoming` messages for the core's intake and streams replies back (`deliver`).

Lifecycle: `__aenter__` logs in over REST (checks the token) and syncs the slash commands,
`run()` is the gateway connection (`client.connect()`, which resumes or reconnects by itself),
`__aexit__` closes the client. Messages arrive as discord.py's `on_message` events, slash
commands through the `CommandTree` (`commands`); each is handled in discord.py's own task and
counted, so that `handled()` can wait for them. In an `auto_thread` channel a mention opens a
thread first, and the conversation is the thread's.

Policy (who may talk, admin-only commands, documents, notices) is the core's; this adapter
answers the one question only the platform can: is this member an admin of this server
(Manage Server, read from the member's permissions when the message arrived).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Self

import discord

from adapters.kit.actions import Ignore, Notice, Observe, Submit
from adapters.kit.gate import Gate, LocalGate, Rate, Rates
from bot.documents import DocumentSource
from bot.errors import AdapterError, ConfigError
from bot.lru import Lru
from bot.types import ConversationKey, Incoming

from . import commands, stream
from .settings import DiscordSettings
from .translate import (
    PLATFORM,
    Action,
    Fetch,
    command_incoming,
    scopes_of,
    thread_name,
    translate,
)

if TYPE_CHECKING:
    from adapters.kit.runner import AdapterHost

log = logging.getLogger(__name__)

# Discord's documented limits: 5 messages or edits per 5 s per channel, 50 requests a second
# per bot overall.
DISCORD_RATES = Rates(per_chat=Rate(5, 5.0), overall=Rate(50, 1.0))
# Channels known to be in a server (answers there reply to the question); DMs are not.
GUILD_CHANNELS_KNOWN = 100_000
# Slash commands whose answer is still to come, by interaction id; Discord lets a deferred
# response be edited for 15 minutes.
INTERACTIONS_KNOWN = 10_000
MISSING_INTENT = (
    "Discord refused the Message Content intent: switch it on in the developer portal "
    "(your application -> Bot -> Privileged Gateway Intents -> Message Content Intent); "
    "without it Discord gives a bot only the text of DMs, of messages that mention it, and "
    "slash commands"
)


def create(host: AdapterHost, settings: DiscordSettings) -> DiscordAdapter:
    return DiscordAdapter(host, settings)


def intents() -> discord.Intents:
    # Message content is privileged: without it server messages arrive with empty text.
    wanted = discord.Intents.default()
    wanted.message_content = True
    return wanted


class DiscordAdapter:
    platform = PLATFORM

    def __init__(
        self, host: AdapterHost, settings: DiscordSettings, *, rates: Rates = DISCORD_RATES
    ) -> None:
        if settings.token is None:
            raise ConfigError("PARLEY_DISCORD__TOKEN: required when the discord adapter runs")
        self._host = host
        self._intake = host.intake
        self._settings = settings
        self.gate: Gate = LocalGate(rates)
        self.client = self._client(settings)
        self.client.event(self.on_message)
        # on_message events finished: `handled()` waits on it (a test, a drain).
        self.messages_handled = 0
        self._progress = asyncio.Condition()
        self._guild_channels: Lru[bool] = Lru(GUILD_CHANNELS_KNOWN)
        self._interactions: Lru[discord.Interaction] = Lru(INTERACTIONS_KNOWN)
        self.tree = commands.build_tree(self.client, host.router.commands, self.on_command)

    @staticmethod
    def _client(settings: DiscordSettings) -> discord.Client:
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
            raise AdapterError(
                "Discord refused the token (401 Unauthorized): check PARLEY_DISCORD__TOKEN "
                "(developer portal -> your application -> Bot -> Reset Token)"
            ) from None
        except (discord.HTTPException, OSError) as exc:
            await self.client.close()
            raise AdapterError(f"Discord cannot be reached: {exc}") from None
        try:
            await commands.sync(self.tree, self._settings.guild_ids)
        except discord.HTTPException as exc:  # 403: invited without applications.commands
            await self.client.close()
            raise AdapterError(f"Discord refused the slash commands: {exc}") from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.close()

    async def run(self) -> None:
        try:
            await self.client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            raise AdapterError(MISSING_INTENT) from None
        except discord.LoginFailure:
            raise AdapterError("Discord refused the token: check PARLEY_DISCORD__TOKEN") from None

    async def handled(self, count: int) -> None:
        """Wait until `count` message events have been handled (recorded, refused or ignored)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.messages_handled >= count)

    async def idle(self) -> None:
        """Wait until every turn in this process is answered and every notice sent."""
        await self._intake.idle()

    async def on_message(self, message: discord.Message) -> None:
        """discord.py's event (its own task): hand the message to the core."""
        try:
            if message.guild is not None:
                self._guild_channels.put(message.channel.id, True)
            action = translate(message, self.me)
            if isinstance(action, Submit) and message.channel.id in self._settings.auto_thread:
                action = await self._in_new_thread(message, action)
            await self.act(action)
        except Exception:  # one bad message must not end the event loop's handling of others
            log.exception("message %s could not be handled; skipped", message.id)
        finally:
            await self._count_handled()

    async def _in_new_thread(self, message: discord.Message, action: Submit) -> Submit:
        """auto_thread: a thread named after the question holds the conversation from here.
        A thread that cannot be opened (no permission) leaves the answer in the channel."""
        try:
            thread = await message.create_thread(name=thread_name(action.incoming.text))
        except discord.HTTPException as exc:
            log.warning("channel %s: no thread opened (%s)", message.channel.id, exc)
            return action
        self._guild_channels.put(thread.id, True)
        key = ConversationKey(PLATFORM, str(thread.id))
        moved = dataclasses.replace(action.incoming, key=key, scopes=scopes_of(thread))
        return Submit(moved)

    async def on_command(self, interaction: discord.Interaction, name: str, text: str) -> None:
        """A slash command (the CommandTree's task): deferred first, within Discord's 3 s."""
        try:
            await interaction.response.defer()
            self._interactions.put(str(interaction.id), interaction)
            await self._intake.submit(command_incoming(interaction, name, text))
        except Exception:
            log.exception("slash command %s could not be handled; skipped", interaction.id)
        finally:
            await self._count_handled()

    async def _count_handled(self) -> None:
        async with self._progress:
            self.messages_handled += 1
            self._progress.notify_all()

    async def act(self, action: Action) -> None:
        if isinstance(action, Submit):
            await self._intake.submit(action.incoming)
        elif isinstance(action, Observe):
            await self._intake.observe(action.incoming)
        elif isinstance(action, Fetch):
            await self._intake.submit_document(action.incoming, _document(action.attachment))
        elif isinstance(action, Notice):
            mb = self._host.settings.documents.max_bytes // 10**6
            self._intake.notify(action.incoming, action.sentence, mb=mb)
        elif isinstance(action, Ignore):
            log.debug("message ignored: %s", action.reason)

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        channel_id = int(key.chat_id)
        channel = self.client.get_partial_messageable(channel_id)
        interaction = self._interactions.get(reply_to) if reply_to else None
        if interaction is not None:
            self._interactions.discard(reply_to)
        # In a server the answer replies to the question (who asked what); a DM has one asker.
        reference = None
        if interaction is None and reply_to and channel_id in self._guild_channels:
            reference = discord.MessageReference(
                message_id=int(reply_to), channel_id=channel_id, fail_if_not_exists=False
            )
        await stream.play(
            channel,
            self.gate,
            chunks,
            interval_s=self._settings.stream_interval_s,
            reply_to=reference,
            interaction=interaction,
        )

    async def is_admin(self, incoming: Incoming) -> bool:
        return incoming.extras.get("manage_guild") is True


def _document(attachment: discord.Attachment) -> DocumentSource:
    name = attachment.filename or "document"
    return DocumentSource(name, attachment.content_type or "", attachment.size, attachment.read)
