"""Gateway-shaped payloads (GUILD_CREATE, MESSAGE_CREATE, INTERACTION_CREATE), as Discord's
gateway sends them. The fake gateway (tests/discord_api.py) delivers them to the real
`discord.Client`, which builds its messages, members and interactions from them and resolves
guild, channel and roles from its cache, as it does in production.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.discord_api import APP_ID, BOT_ID, BOT_USER, EPOCH, next_id

GUILD = 5000
CHANNEL = 5001
THREAD = 5002
CATEGORY = 5003
DM = 5100
USER = 1001
ADMIN = 1002
ADMIN_ROLE = 5200
MEMBER_ROLE = 5201
# The role Discord gives the bot in every server it joins (managed, tagged with its id): users
# pick "@Parley" from the mention list and may get this one.
BOT_ROLE = 5299
MANAGE_GUILD = 1 << 5
# A second server, on the other shard of two ((id >> 22) % 2 == 1), with one channel.
GUILD_2 = (1 << 22) + 6000
CHANNEL_2 = 6001


def user(user_id: int = USER) -> dict[str, Any]:
    return {"id": str(user_id), "username": f"user{user_id}", "discriminator": "0",
            "avatar": None, "global_name": f"User {user_id}"}  # fmt: skip


def guild_create(guild: int = GUILD, channel: int = CHANNEL) -> dict[str, Any]:
    """The test server (or, with other ids, a second one: same roles, channels, thread)."""
    thread = THREAD if guild == GUILD else channel + 1
    category = CATEGORY if guild == GUILD else channel + 2

    def role(role_id: int, name: str, permissions: int) -> dict[str, Any]:
        return {"id": str(role_id), "name": name, "permissions": str(permissions),
                "position": 0, "color": 0, "hoist": False, "managed": False,
                "mentionable": True}  # fmt: skip

    return {
        "id": str(guild),
        "name": "Test server",
        "owner_id": "999999",
        "roles": [
            role(guild, "@everyone", 0),
            role(ADMIN_ROLE, "admins", MANAGE_GUILD),
            role(MEMBER_ROLE, "members", 0),
            {**role(BOT_ROLE, "Parley", 0), "managed": True, "tags": {"bot_id": str(BOT_ID)}},
        ],
        "channels": [
            {"id": str(category), "type": 4, "name": "talk", "position": 0},
            {
                "id": str(channel),
                "type": 0,
                "name": "general",
                "position": 1,
                "parent_id": str(category),
            },
        ],
        "threads": [
            {
                "id": str(thread),
                "type": 11,
                "name": "a question",
                "parent_id": str(channel),
                "guild_id": str(guild),
                "owner_id": str(USER),
                "message_count": 1,
                "member_count": 1,
                "thread_metadata": {
                    "archived": False,
                    "locked": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": EPOCH,
                },
            },
        ],
        "members": [],
        "emojis": [],
        "stickers": [],
        "features": [],
        "member_count": 3,
        "large": False,
        "unavailable": False,
    }


def message_create(
    text: str,
    *,
    channel: int = DM,
    author: int = USER,
    roles: tuple[int, ...] = (MEMBER_ROLE,),
    mentions_bot: bool = False,
    reply_to: dict[str, Any] | None = None,
    attachments: list[dict[str, Any]] | None = None,
    message_id: int | None = None,
    guild: int = GUILD,
    stickers: list[str] | None = None,
) -> dict[str, Any]:
    """A MESSAGE_CREATE as the gateway sends it; in the server when `channel` is not DM.
    `stickers`: the names of stickers sent with it (its `sticker_items`)."""
    in_guild = channel != DM
    payload: dict[str, Any] = {
        "id": str(message_id or next_id()),
        "channel_id": str(channel),
        "author": user(author),
        "content": f"<@{BOT_ID}> {text}" if mentions_bot else text,
        "timestamp": EPOCH,
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [BOT_USER] if mentions_bot else [],
        "mention_roles": [],
        "attachments": attachments or [],
        "embeds": [],
        "pinned": False,
        "type": 19 if reply_to else 0,
    }
    if stickers:
        payload["sticker_items"] = [
            {"id": str(next_id()), "name": name, "format_type": 1} for name in stickers
        ]
    if in_guild:
        payload["guild_id"] = str(guild)
        payload["member"] = {"roles": [str(r) for r in roles], "joined_at": EPOCH,
                             "deaf": False, "mute": False, "flags": 0}  # fmt: skip
    if reply_to is not None:
        payload["message_reference"] = {"message_id": reply_to["id"], "channel_id": str(channel)}
        payload["referenced_message"] = reply_to
    return payload


def forward(
    text: str,
    *,
    channel: int = DM,
    attachments: list[dict[str, Any]] | None = None,
    stickers: list[str] | None = None,
) -> dict[str, Any]:
    """A message forwarded into `channel` (Discord's "Forward"): a MESSAGE_CREATE of no text
    of its own, whose message_reference (type 1) names the original and whose
    message_snapshots carry its text, attachments and stickers."""
    payload = message_create("", channel=channel)
    original = message_create(text, channel=CHANNEL, attachments=attachments, stickers=stickers)
    payload["message_reference"] = {"type": 1, "message_id": original["id"],
                                    "channel_id": str(CHANNEL), "guild_id": str(GUILD)}  # fmt: skip
    kept = ("type", "content", "embeds", "attachments", "timestamp", "edited_timestamp",
            "mentions", "mention_roles", "sticker_items")  # fmt: skip
    snapshot = {k: original[k] for k in kept if k in original}
    payload["message_snapshots"] = [{"message": {**snapshot, "flags": 0}}]
    return payload


def bot_message(channel: int, text: str = "an earlier answer") -> dict[str, Any]:
    """A message of ours, as a reply's `referenced_message` carries it."""
    return {**message_create(text, channel=channel), "author": BOT_USER}


def interaction_create(
    name: str,
    text: str = "",
    *,
    channel: int = DM,
    author: int = USER,
    admin: bool = False,
    created: datetime | None = None,
    target: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An INTERACTION_CREATE for slash command `/name text`, as the gateway sends it; with
    `target` (a message's payload), for the message context-menu command `name` on it.
    `created`: when the user started it (Discord's 15 minutes run from then)."""
    interaction_id = next_id(created)
    options = [{"name": "text", "type": 3, "value": text}] if text else []
    data: dict[str, Any] = {"id": "1", "name": name, "type": 1, "options": options}
    if target is not None:
        resolved = {k: v for k, v in target.items() if k != "member"}
        data = {"id": "2", "name": name, "type": 3, "target_id": target["id"],
                "resolved": {"messages": {target["id"]: resolved}}}  # fmt: skip
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(APP_ID),
        "type": 2,
        "token": f"interaction-token-{interaction_id}",
        "version": 1,
        "data": data,
        "channel_id": str(channel),
        "locale": "en-US",
        "app_permissions": "0",
        "entitlements": [],
        "attachment_size_limit": 10 * 2**20,
        "authorizing_integration_owners": {},
    }
    if channel == DM:
        payload["user"] = user(author)
        payload["channel"] = {"id": str(channel), "type": 1}
        payload["context"] = 1
    else:
        role = ADMIN_ROLE if admin else MEMBER_ROLE
        permissions = MANAGE_GUILD if admin else 0
        payload["guild_id"] = str(GUILD)
        payload["guild_locale"] = "en-US"
        payload["context"] = 0
        payload["channel"] = {"id": str(channel), "type": 0, "guild_id": str(GUILD),
                              "name": "general", "position": 1}  # fmt: skip
        payload["member"] = {"user": user(author), "roles": [str(role)], "joined_at": EPOCH,
                             "deaf": False, "mute": False, "flags": 0,
                             "permissions": str(permissions)}  # fmt: skip
    return payload
