"""The Discord adapter's registry entry: imports no SDK (see bot.adapter_registry)."""

from __future__ import annotations

from bot.adapter_registry import AdapterSpec

from .settings import DiscordSettings

SPEC = AdapterSpec(
    name="discord",
    settings=DiscordSettings,
    factory="adapters.discord.adapter:create",
    summary="Discord bot: DMs, server channels (mentions and replies), threads, slash commands",
    extra="discord",
    sdk="discord",
    doctor="adapters.discord.adapter:doctor",
)
