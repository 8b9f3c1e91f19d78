"""Build the configured backend. Implementations are imported only when chosen, so a bot
without a model never imports httpx's streaming code or vLLM."""

from __future__ import annotations

from backends.base import Backend
from bot.settings import BackendSettings


def build_backend(settings: BackendSettings) -> Backend | None:
    """The backend `settings.kind` names, not started; None when no model is configured."""
    if settings.kind == "vllm":
        from backends.vllm_engine import VllmEngineBackend

        return VllmEngineBackend(settings)
    if settings.kind == "openai":
        from backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(settings)
    return None
