"""The support adapter's registry entry: imports no web framework (see bot.adapter_registry)."""

from __future__ import annotations

from bot.adapter_registry import AdapterSpec

from .settings import SupportSettings

SPEC = AdapterSpec(
    name="support",
    settings=SupportSettings,
    factory="adapters.support.adapter:create",
    summary="customer support: an HTTP API with streamed answers, for a web chat widget",
    # Takes the core's settings too: whether several workers may serve (see bot/doctor.py).
    doctor="adapters.support.settings:doctor",
    private_chat_is_user=True,
)
