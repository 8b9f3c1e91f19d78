"""A fallback chain: the first backend that answers, in the configured order.

The chain moves to the next backend when one fails before its first text chunk (including a
refusal by its open circuit breaker). Once text has been yielded, a failure is passed on: the
core ends that reply with its cut-off note rather than start the answer again elsewhere.
When the answer comes from a backend other than the first, one `Chunk(notice=...)` is yielded
right before its first text, so the core can tell the user. When every backend fails, the
last error is raised (a `BackendUnavailable` where they were unreachable), and the core
answers with its one sentence: the last resort is the core's no-model answer.

A too-long prompt (`ContextTooLong`) is not a backend fault and goes straight to the caller,
which shrinks the context; the fallback's context might be even smaller.

Token counts come from the first backend that can give them (a server that is down cannot
count), else from `estimate_tokens`, so messages are still accepted while the primary is down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TypeVar

from backends.base import (
    Capabilities,
    Chunk,
    GenerationRequest,
    estimate_chat_tokens,
    estimate_tokens,
)
from backends.breaker import BreakerState
from backends.resilience import ResilientBackend
from bot.errors import BackendError, BackendUnavailable, ConfigError, ContextTooLong
from bot.types import ChatMessage

log = logging.getLogger(__name__)

T = TypeVar("T")


def fallback_notice(name: str) -> str:
    return f"The main language model is unavailable; this answer comes from the fallback {name}."


class FallbackChain:
    """The `Backend` protocol over several `ResilientBackend`s, tried in order."""

    def __init__(self, backends: Sequence[ResilientBackend]) -> None:
        if not backends:
            raise ValueError("a fallback chain needs at least one backend")
        self.backends = list(backends)
        self._started: list[ResilientBackend] = []
        self.fallbacks = 0  # answers that came from a backend other than the first

    @property
    def capabilities(self) -> Capabilities:
        """The primary's, with the smallest context of the chain, so any member can answer."""
        primary = self.backends[0].capabilities
        lengths = [b.capabilities.max_model_len for b in self._started or self.backends]
        exact = all(b.capabilities.exact_token_counts for b in self._started or self.backends)
        usable = [n for n in lengths if n > 0]
        max_len = min(usable) if usable else primary.max_model_len
        return dataclasses.replace(primary, max_model_len=max_len, exact_token_counts=exact)

    async def start(self) -> None:
        """Start every backend that can start; fail only when none can. A member that is
        misconfigured (a missing extra: ConfigError) is one of those that cannot; when every
        member is, that is a configuration problem (exit status 2), else one to wait for."""
        errors: list[str] = []
        configuration = True
        for backend in self.backends:
            if backend in self._started:
                continue
            try:
                await backend.start()
            except (BackendError, ConfigError) as exc:
                log.warning("backend %s did not start: %s", backend.name, exc)
                errors.append(f"{backend.name}: {exc}")
                configuration = configuration and isinstance(exc, ConfigError)
            else:
                self._started.append(backend)
        if not self._started:
            error = ConfigError if configuration else BackendUnavailable
            raise error("no backend could start: " + "; ".join(errors))

    def _live(self) -> list[ResilientBackend]:
        return [b for b in self.backends if b in self._started]

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        last: BackendError = BackendUnavailable("no backend is started")
        for index, backend in enumerate(self._live()):
            shown = False
            try:
                async with contextlib.aclosing(backend.stream(request)) as chunks:
                    async for chunk in chunks:
                        if chunk.text and not shown and index > 0:
                            self.fallbacks += 1
                            yield Chunk(notice=fallback_notice(backend.name))
                        shown = shown or bool(chunk.text)
                        yield chunk
                return
            except ContextTooLong:
                raise
            except BackendError as exc:
                if shown:
                    raise
                log.warning("backend %s failed before answering: %s", backend.name, exc)
                last = exc
        raise last

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self._first_answer(
            lambda b: b.count_tokens(texts), lambda: [estimate_tokens(t) for t in texts]
        )

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self._first_answer(
            lambda b: b.count_chat_tokens(messages),
            lambda: estimate_chat_tokens(messages),
        )

    async def _first_answer(
        self,
        ask: Callable[[ResilientBackend], Awaitable[T]],
        estimate: Callable[[], T],
    ) -> T:
        for backend in self._live():
            # Asked, not acquired: counting is not a generation, and must not take a half-open
            # breaker's probe slots; it proves nothing about the server either way.
            if backend.breaker.state is BreakerState.OPEN:
                continue
            try:
                return await ask(backend)
            except BackendError as exc:
                log.info("backend %s cannot count tokens: %s", backend.name, exc)
        return estimate()

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()
