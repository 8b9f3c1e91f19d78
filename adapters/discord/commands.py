"""Slash commands generated from Parley's command registry (`host.router.commands`): one
`/name` per command, with one optional text option for its arguments, in a
`discord.app_commands.CommandTree` synced at start (to listed servers: instant; globally:
Discord may take up to an hour to show a change).

Discord allows 3 s to answer an interaction, and a turn can take longer to produce its first
token: the callback defers at once, and the answer is streamed into the deferred response
(`stream.InteractionSurface`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import discord
from discord import app_commands

from bot import phrases
from bot.skills.router import Command

log = logging.getLogger(__name__)

# Discord's limits on a command's description.
DESCRIPTION_MAX = 100
OnCommand = Callable[[discord.Interaction, str, str], Awaitable[None]]


def build_tree(
    client: discord.Client, commands: Sequence[Command], on_command: OnCommand
) -> app_commands.CommandTree[discord.Client]:
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    for command in commands:
        tree.add_command(_slash(command, on_command))
    return tree


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
