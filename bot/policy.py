"""Who may talk to the bot, and who may change what a whole group gets.

The rules are the core's, the same on every platform; each adapter's settings section carries
its own `access` table (`[telegram.access]`, `[discord.access]`, ...) because ids only mean
something on their platform. An adapter only reports who sent a message, where (the chat and
the places around it: a Discord thread's channel, category and server), with which roles, and
whether the platform itself counts the sender as an admin there.

    allowed:  not blocked (user, any enclosing chat, any role), and every non-empty allow
              list matched; the `admins` list is always allowed
    admin:    in the `admins` list, or an admin by the platform's own rules (group admins)
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from bot.types import Incoming


def _as_id(value: object) -> object:
    # Telegram ids are numbers and Discord's are strings of digits: both are kept as text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Id = Annotated[str, BeforeValidator(_as_id)]


class AccessRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Empty: everyone. Otherwise only these user ids.
    allowed_users: list[Id] = []
    blocked_users: list[Id] = []
    # Chats, channels, threads or servers; a message counts as in every one that encloses it.
    allowed_chats: list[Id] = []
    blocked_chats: list[Id] = []
    # Platform roles (Discord role ids); empty: any role.
    allowed_roles: list[Id] = []
    blocked_roles: list[Id] = []
    # Operators: always allowed, and admins everywhere for admin-only commands.
    admins: list[Id] = []


def is_allowed(rules: AccessRules, incoming: Incoming) -> bool:
    user = incoming.user.user_id
    if user and user in rules.admins:
        return True
    places = {incoming.key.chat_id, *incoming.scopes}
    if incoming.key.thread_id:
        places.add(incoming.key.thread_id)
    roles = set(incoming.user.roles)
    if user in rules.blocked_users or places & set(rules.blocked_chats):
        return False
    if roles & set(rules.blocked_roles):
        return False
    return (
        (not rules.allowed_users or user in rules.allowed_users)
        and (not rules.allowed_chats or bool(places & set(rules.allowed_chats)))
        and (not rules.allowed_roles or bool(roles & set(rules.allowed_roles)))
    )


def is_operator(rules: AccessRules, incoming: Incoming) -> bool:
    return bool(incoming.user.user_id) and incoming.user.user_id in rules.admins
