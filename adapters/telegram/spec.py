"""The Telegram adapter's registry entry: imports no SDK (see bot.adapter_registry)."""

from __future__ import annotations

from bot.adapter_registry import AdapterSpec

from .settings import TelegramSettings

SPEC = AdapterSpec(
    name="telegram",
    settings=TelegramSettings,
    factory="adapters.telegram.adapter:create",
    summary="Telegram bot: private chats, groups and forum topics (polling or webhook)",
    extra="telegram",
    sdk="telegram",
    doctor="adapters.telegram.adapter:doctor",
    private_chat_is_user=True,
)
