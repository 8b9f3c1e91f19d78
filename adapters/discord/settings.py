"""The `[discord]` settings section (PARLEY_DISCORD__*). Who may talk to the bot is in
`[discord.access]` (bot.policy.AccessRules: guilds, channels, roles and users by id); the caps
on documents are `[documents]`."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import AfterValidator, Field, SecretStr, model_validator

from bot.adapter_registry import AdapterSettings

# A Discord id (a snowflake): a positive 64-bit number, as "Copy ID" in Discord's developer
# mode gives it.
_SNOWFLAKE = re.compile(r"[1-9][0-9]{0,19}")
_SNOWFLAKE_MAX = 2**64 - 1
_ACCESS_LISTS = (
    "allowed_users", "blocked_users", "allowed_chats", "blocked_chats",
    "allowed_roles", "blocked_roles", "admins",
)  # fmt: skip


def _is_snowflake(value: str) -> bool:
    return bool(_SNOWFLAKE.fullmatch(value)) and int(value) <= _SNOWFLAKE_MAX


# A bot token as the developer portal gives it: base64url parts joined by dots
# ("MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4se7kKWs"). Their number and lengths
# are not checked: Discord does not promise them.
_BOT_TOKEN = re.compile(r"[A-Za-z0-9._-]+")


def _bot_token(token: SecretStr | None) -> SecretStr | None:
    # PARLEY_DISCORD__TOKEN= (an empty variable in a compose file) is no token, not one that
    # Discord would refuse at every start.
    if token is None or not token.get_secret_value().strip():
        return None
    # One with a space ("Bot MTk4...", as the Authorization header reads), a line break or
    # another control character went to the network: aiohttp refused to send the header, and
    # `parley doctor` ended with its traceback. The token itself is never quoted.
    if not _BOT_TOKEN.fullmatch(token.get_secret_value()):
        raise ValueError(
            "not a bot token: the developer portal's (Bot tab) are letters, digits, ., _ and - "
            'only (without "Bot " before them)'
        )
    return token


class DiscordSettings(AdapterSettings):
    # The bot token from the developer portal (Bot tab). Never logged.
    token: Annotated[SecretStr | None, AfterValidator(_bot_token)] = None

    def missing(self) -> str | None:
        if self.token is None:
            return "PARLEY_DISCORD__TOKEN: required when the discord adapter runs"
        return None

    # Slash commands are synced to these guilds at start (instant, for development); empty:
    # globally (Discord may take up to an hour to show a global change).
    guild_ids: list[Annotated[int, Field(ge=1, le=_SNOWFLAKE_MAX)]] = Field(default_factory=list)
    # Channel ids where a mention opens a thread named after the question: the answer and the
    # rest of the conversation go there, without further mentions.
    auto_thread: list[Annotated[int, Field(ge=1, le=_SNOWFLAKE_MAX)]] = Field(default_factory=list)
    # Seconds between two visible edits of a streamed answer: Discord allows 5 edits per 5 s
    # per channel, shared by every answer in that channel.
    stream_interval_s: float = Field(1.0, ge=0.05)
    # Embeds (link previews) under the bot's messages. Off: Discord fetches a link to embed
    # the moment the message shows it, so a link that a prompt injection had the model write
    # (a secret in its query) would reach its owner with no one clicking (docs/security.md).
    link_previews: bool = False
    # Sharding (discord.py's AutoShardedClient): shard_count shards in all, this process runs
    # shard_ids (all of them when unset). Discord requires sharding from 2,500 servers. Unset
    # shard_count: one gateway connection, no sharding.
    shard_ids: list[int] | None = None
    shard_count: int | None = Field(None, ge=1)
    # After a start, and after a gateway reconnect that was not a resume, messages sent to the
    # bot while it was away are read back from the channels and threads (and DMs) that had a
    # message in the last backfill_hours, and answered once. 0: no backfill.
    backfill_hours: float = Field(24.0, ge=0)

    @model_validator(mode="after")
    def _shards_need_a_count(self) -> Self:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("discord.shard_count is required when shard_ids is set")
            if any(not 0 <= s < self.shard_count for s in self.shard_ids):
                raise ValueError("discord.shard_ids must be within 0 .. shard_count - 1")
            if len(set(self.shard_ids)) != len(self.shard_ids):
                raise ValueError("discord.shard_ids: each shard once")
        return self

    @model_validator(mode="after")
    def _ids_are_snowflakes(self) -> Self:
        # Discord knows users, channels, servers and roles by number; a name (@bob, troll#1234,
        # Muted) would match no one: a block list of names blocks nobody, and an allow list
        # of only names locks everyone out.
        for name in _ACCESS_LISTS:
            wrong = [i for i in getattr(self.access, name) if not _is_snowflake(i)]
            if wrong:
                raise ValueError(
                    f"discord.access.{name}: {', '.join(repr(w[:40]) for w in wrong[:3])} is "
                    "not a Discord id (a number: Developer Mode, then Copy ID; names are not "
                    "taken)"
                )
        return self
