"""Slash commands generated from Parley's command registry (`host.router.commands`): one
`/name` per command, with one optional text option for its arguments, in a
`discord.app_commands.CommandTree` synced at start (to listed servers: instant; globally:
Discord may take up to an hour to show a change).

Message context-menu commands (a message's "Apps" menu) run a registry command on that
message: "Translate" is /translate of its text, "Summarize from here" /summarize of the
conversation from it on (`MENUS`).

Discord allows 3 s to answer an interaction, and a turn can take longer to produce its first
token: the callback defers at once, and the answer is streamed into the deferred response
(`stream.InteractionSurface`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord
from discord import app_commands

from adapters.kit.gate import Gate
from bot import phrases
from bot.skills.router import Command
from bot.skills.summarize import transcript
from bot.storage.base import LoggedMessage

from .translate import content_of

log = logging.getLogger(__name__)

# Discord's limits on a command's description.
DESCRIPTION_MAX = 100
OnCommand = Callable[[discord.Interaction, str, str], Awaitable[None]]
OnMenu = Callable[[discord.Interaction, str, discord.Message], Awaitable[None]]
# Message context-menu commands: their name in Discord's menu -> the registry command they run
# on the message. Names are Discord command names (like /translate), not sentences.
TRANSLATE, SUMMARIZE_FROM_HERE = "Translate", "Summarize from here"
MENUS = {TRANSLATE: "translate", SUMMARIZE_FROM_HERE: "summarize"}
# "Summarize from here" reads at most this many pages of 100 messages after the chosen one.
FROM_HERE_PAGES = 4
# "Summarize from here" where the bot may not read the channel's history.
NO_HISTORY = phrases.N_("I can't read the earlier messages here, so I can't summarize them.")
# "Translate" on a message with no text (a picture, an embed, a sticker).
NO_TEXT = phrases.N_("That message has no text to translate.")


def build_tree(
    client: discord.Client,
    commands: Sequence[Command],
    on_command: OnCommand,
    on_menu: OnMenu,
) -> app_commands.CommandTree[discord.Client]:
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    for command in commands:
        tree.add_command(_slash(command, on_command))
    registered = {command.name for command in commands}
    for label, name in MENUS.items():
        if name in registered:  # a registry without the skill gets no menu entry for it
            tree.add_command(_menu(label, name, on_menu))
    return tree


def _menu(label: str, name: str, on_menu: OnMenu) -> app_commands.ContextMenu:
    async def callback(interaction: discord.Interaction, message: discord.Message) -> None:
        await on_menu(interaction, name, message)

    return app_commands.ContextMenu(
        name=label, callback=callback, type=discord.AppCommandType.message
    )


def _slash(command: Command, on_command: OnCommand) -> app_commands.Command[Any, ..., None]:
    name = command.name

    async def callback(interaction: discord.Interaction, text: str = "") -> None:
        await on_command(interaction, name, text)

    description = phrases.say(command.summary, "")[:DESCRIPTION_MAX] or name
    return app_commands.Command(name=name, description=description, callback=callback)


async def sync(tree: app_commands.CommandTree[discord.Client], guild_ids: Sequence[int]) -> None:
    if not guild_ids:
        await tree.sync()
        return
    for guild_id in guild_ids:
        guild = discord.Object(guild_id)
        tree.copy_global_to(guild=guild)
        await tree.sync(guild=guild)


async def conversation_from(target: discord.Message, gate: Gate, *, max_chars: int, me: int) -> str:
    """The conversation from `target` on, oldest first, as /summarize reads a chat
    (bot.skills.summarize.transcript: each sentence after its speaker's label, line breaks
    flattened, names cleaned, the bot's own messages labelled as the bot's), at most
    `max_chars` characters; each page read through the channel's gate. Raw "name: text"
    lines let one member's message forge lines of the bot and of other members (a helper's
    review)."""
    rows, after = [_logged(target, me)], target
    for _ in range(FROM_HERE_PAGES):
        async with gate.slot(f"read:{target.channel.id}", group=False):
            page = [m async for m in target.channel.history(after=after, limit=100)]
        rows += [_logged(message, me) for message in page]
        if len(page) < 100 or sum(len(r.content) for r in rows) >= max_chars:
            break
        after = page[-1]
    return transcript([r for r in rows if r.content], quoted=False)[:max_chars]


def _logged(message: discord.Message, me: int) -> LoggedMessage:
    author = message.author
    return LoggedMessage(
        message.id, author.display_name, author.id == me, content_of(message).strip(),
        message.created_at,
    )  # fmt: skip
