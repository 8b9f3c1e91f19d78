"""Retries that never duplicate text, a retry budget, and a circuit breaker around a backend.

`ResilientBackend` wraps any `Backend` and keeps its protocol:

- A request is retried only while nothing with text has been yielded, so a consumer never
  receives the same words twice; and only for connection errors, 429 and 503
  (`BackendUnavailable` with `status` None, 429 or 503). Time-outs, context-length errors and
  other refusals are not retried here: a fallback (`backends.fallback`) or the core handles them.
- Backoff is exponential with full jitter, at least the server's Retry-After (capped at
  `max_retry_after_s`), and never past the reply's `total_s` counted from the first try.
- A retry budget (Envoy's / gRPC's idea) caps retries at `budget_ratio` of recent requests: each
  new request earns `budget_ratio` of a token, each retry spends one. A server failing half its
  requests thus sees at most ~1.2x its normal load from this client, not 3x.
- A `CircuitBreaker` refuses requests at once while the backend is known to be failing; the
  refusal is a `BackendUnavailable`, so a fallback chain moves on without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Sequence

from backends.base import Backend, Capabilities, Chunk, GenerationRequest
from backends.breaker import CircuitBreaker
from bot.errors import BackendError, BackendUnavailable, ContextTooLong
from bot.settings import BackendSettings, RetrySettings
from bot.types import ChatMessage

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 503})


class CircuitOpen(BackendUnavailable):
    """The circuit breaker refused the request without sending it."""


def is_retryable(exc: BackendError) -> bool:
    """Connection errors (no status), 429 and 503; never a refusal of the request itself."""
    if not isinstance(exc, BackendUnavailable) or isinstance(exc, CircuitOpen):
        return False
    return exc.status is None or exc.status in RETRY_STATUSES


def counts_against_backend(exc: BaseException) -> bool:
    """Failures that say the backend is unwell; a too-long prompt is the caller's doing."""
    return isinstance(exc, BackendError) and not isinstance(exc, (ContextTooLong, CircuitOpen))


class RetryBudget:
    """A token bucket of retries: requests deposit `ratio` tokens, a retry withdraws one."""

    def __init__(self, ratio: float, min_retries: int) -> None:
        self._ratio = ratio
        # Saved-up retries are capped so a long quiet spell cannot fund a retry storm.
        self._cap = max(1.0, float(min_retries))
        self._tokens = float(min_retries)

    def on_request(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def backoff_s(
    attempt: int, retry_after: float | None, settings: RetrySettings, rng: random.Random
) -> float:
    """Seconds before retry number `attempt` (1-based): full jitter, at least Retry-After."""
    ceiling = min(settings.max_delay_s, settings.base_delay_s * 2 ** (attempt - 1))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.max_retry_after_s))
    return delay


@dataclasses.dataclass
class RequestCounts:
    """What reached this layer and what it sent on: `sent / requests` is the load factor."""

    requests: int = 0  # stream() calls
    sent: int = 0  # tries passed to the backend (first tries and retries)
    retries: int = 0
    refused: int = 0  # refused at once by the open circuit breaker


class ResilientBackend:
    """A `Backend` with retries, a retry budget and a circuit breaker around `inner`."""

    def __init__(
        self,
        inner: Backend,
        settings: BackendSettings,
        *,
        name: str = "",
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = name or settings.model
        self.settings = settings
        self._retry = settings.retry
        self.breaker = CircuitBreaker(settings.breaker, name=self.name, clock=clock)
        self._budget = RetryBudget(settings.retry.budget_ratio, settings.retry.budget_min_retries)
        self._rng = rng or random.Random()
        self.counts = RequestCounts()

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def start(self) -> None:
        await self.inner.start()

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self.inner.count_tokens(texts)

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self.inner.count_chat_tokens(messages)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.counts.requests += 1
        self._budget.on_request()
        deadline = time.monotonic() + self.settings.timeouts.total_s
        attempt = 0
        while True:
            attempt += 1
            shown = False
            try:
                async with contextlib.aclosing(self._attempt(request, attempt)) as chunks:
                    async for chunk in chunks:
                        shown = shown or bool(chunk.text)
                        yield chunk
                return
            except BackendError as exc:
                if shown or not await self._wait_to_retry(exc, attempt, deadline):
                    raise

    async def _attempt(
        self, request: GenerationRequest, attempt: int
    ) -> AsyncGenerator[Chunk, None]:
        """One try, with the breaker told how it went."""
        if not self.breaker.try_acquire():
            self.counts.refused += 1
            raise CircuitOpen(f"{self.name}: circuit breaker open")
        self.counts.sent += 1
        if attempt > 1:  # a fresh id: the engine may still hold the aborted first try
            request = dataclasses.replace(request, request_id=f"{request.request_id}-{attempt}")
        verdict = False
        try:
            async with contextlib.aclosing(self.inner.stream(request)) as chunks:
                async for chunk in chunks:
                    yield chunk
            self.breaker.record_success()
            verdict = True
        except BaseException as exc:
            if counts_against_backend(exc):
                self.breaker.record_failure()
                verdict = True
            raise
        finally:
            if not verdict:  # cancelled, closed early, or the prompt was too long
                self.breaker.release()

    async def _wait_to_retry(self, exc: BackendError, attempt: int, deadline: float) -> bool:
        """Sleep before the next try and return True, or return False: give up."""
        if not is_retryable(exc) or attempt >= self._retry.attempts:
            return False
        retry_after = exc.retry_after if isinstance(exc, BackendUnavailable) else None
        delay = backoff_s(attempt, retry_after, self._retry, self._rng)
        if time.monotonic() + delay >= deadline:
            return False
        if not self._budget.try_spend():
            log.info("%s: retry budget spent; not retrying %s", self.name, exc)
            return False
        log.info("%s: retry %d in %.2f s after %s", self.name, attempt, delay, exc)
        self.counts.retries += 1
        await asyncio.sleep(delay)
        return True
