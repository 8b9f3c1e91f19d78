"""Build the configured backend. Implementations are imported only when chosen, so a bot
without a model never imports httpx's streaming code or vLLM.

    build_backend            the one backend `backend.kind` names, bare (doctor, tests)
    build_resilient_backend  what the bot talks to: the primary, then `backend.fallbacks` in
                             order, each wrapped in a `ResilientBackend` (retries, retry
                             budget, adaptive first-token limit, circuit breaker: each member
                             its own, so one server's outage opens only its breaker); with
                             fallbacks, in a `FallbackChain`
"""

from __future__ import annotations

from backends.base import Backend
from backends.fallback import FallbackChain
from backends.resilience import ResilientBackend
from bot.settings import BackendSettings, FallbackSettings


def build_backend(settings: BackendSettings) -> Backend | None:
    """The backend `settings.kind` names, not started, without retries; None without a model."""
    return None if settings.kind == "none" else build_plain_backend(settings)


def build_resilient_backend(settings: BackendSettings) -> Backend | None:
    """The resilient backend (or chain) `settings` describes, not started; None without a model."""
    if settings.kind == "none":
        return None
    primary = ResilientBackend(build_plain_backend(settings), settings, name=settings.model)
    if not settings.fallbacks:
        return primary
    chain = [primary]
    for fallback in settings.fallbacks:
        member = fallback_settings(settings, fallback)
        name = fallback.label or fallback.model
        chain.append(ResilientBackend(build_plain_backend(member), member, name=name))
    return FallbackChain(chain)


def build_plain_backend(settings: BackendSettings) -> Backend:
    """One backend of `settings.kind` with no retry layer (`kind` must name a model)."""
    if settings.kind == "vllm":
        from backends.vllm_engine import VllmEngineBackend

        return VllmEngineBackend(settings)
    if settings.kind == "openai":
        from backends.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(settings, concurrency=settings.concurrency)
    raise ValueError(f"backend kind {settings.kind!r} has no model to build")


def fallback_settings(primary: BackendSettings, fallback: FallbackSettings) -> BackendSettings:
    """A fallback's own settings: what it names, the rest (limits, sampling) from the primary."""
    return primary.model_copy(
        update={
            "kind": fallback.kind,
            "model": fallback.model,
            "base_url": fallback.base_url,
            "api_key": fallback.api_key,
            "max_model_len": fallback.max_model_len,
            # The primary model's files: a replica of it counts with them; another model asks
            # its own server (or estimates), never counting its tokens as the primary's.
            "tokenizer": primary.tokenizer if fallback.model == primary.model else "",
            "fallbacks": [],
        }
    )
