"""The Chatwoot adapter's registry entry: imports nothing heavy (see bot.adapter_registry); its
HTTP client (httpx) and retries (tenacity) are core dependencies, so it needs no extra."""

from __future__ import annotations

from bot.adapter_registry import AdapterSpec

from .settings import ChatwootSettings

SPEC = AdapterSpec(
    name="chatwoot",
    settings=ChatwootSettings,
    factory="adapters.chatwoot.adapter:create",
    summary="Chatwoot agent bot: answers pending conversations, hands off to Chatwoot's agents",
    doctor="adapters.chatwoot.doctor:doctor",
)
