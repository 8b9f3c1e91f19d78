"""Retries that never duplicate text, a retry budget, an adaptive first-token limit and a
circuit breaker around a backend.

`ResilientBackend` wraps any `Backend` and keeps its protocol:

- A request is retried only while nothing with text has been yielded, so a consumer never
  receives the same words twice; and only for connection errors, 429, 503 and time-outs
  before the first token. Context-length errors and other refusals are not retried here: a
  fallback (`backends.fallback`) or the core handles them.
- Each try waits for its first token at most the adaptive limit of
  `backends.deadlines.FirstTokenLimit` (seconds for a healthy server, longer as it slows down);
  the try after one that timed out waits the full `first_token_s`, so a server slower than its
  recent past still answers, late, instead of never.
- Backoff is exponential with full jitter, at least the server's Retry-After (capped at
  `max_retry_after_s`), and never past the reply's `total_s` counted from the first try.
- A retry budget (Finagle's and Envoy's idea) caps the retries of the last `budget_window_s` at
  `budget_ratio` of the requests in that window, plus `budget_min_retries`: whatever fails,
  the server sees at most (1 + `budget_ratio`) x the requests from this client.
- A `CircuitBreaker` refuses requests at once during an outage; the refusal is a
  `BackendUnavailable`, so a fallback chain moves on without waiting. 429 is back-pressure,
  not a failure: it is retried after Retry-After and tells the breaker nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TypeVar

from backends.base import (
    Backend,
    Capabilities,
    Chunk,
    GenerationRequest,
    estimate_chat_tokens,
    estimate_tokens,
)
from backends.breaker import BreakerState, CircuitBreaker
from backends.deadlines import FirstTokenLimit, FirstTokenTimeout, first_token_within
from bot.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ClientBusy,
    ContextTooLong,
    ReasoningTooLong,
)
from bot.settings import BackendSettings, RetrySettings
from bot.types import ChatMessage

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 503})
THROTTLED = 429


class CircuitOpen(BackendUnavailable):
    """The circuit breaker refused the request without sending it."""


def is_retryable(exc: BackendError) -> bool:
    """Connection errors (no status), 429, 503 and time-outs; never a refusal of the request.
    (The caller retries only before any text was shown, so a time-out here is a first-token
    or connect time-out, or a gap in a thinking model's reasoning: nothing reached the user.)"""
    if isinstance(exc, ReasoningTooLong):  # a second try would reason as long again
        return False
    if isinstance(exc, BackendTimeout):
        return True
    if not isinstance(exc, BackendUnavailable) or isinstance(exc, CircuitOpen):
        return False
    return exc.status is None or exc.status in RETRY_STATUSES


def counts_against_backend(exc: BaseException) -> bool:
    """Failures that say the backend is unwell. A too-long prompt is the caller's doing, and a
    429 says the server is up and asks for a pause (back-pressure), so neither counts."""
    if isinstance(exc, BackendUnavailable) and exc.status == THROTTLED:
        return False
    if isinstance(exc, ClientBusy):  # this process's own pool is full: the server is fine
        return False
    if isinstance(exc, ReasoningTooLong):  # the model's reasoning, not the server's health
        return False
    return isinstance(exc, BackendError) and not isinstance(exc, (ContextTooLong, CircuitOpen))


class RetryBudget:
    """Retries of the last `window_s` may be at most `ratio` of the requests in that window,
    plus `min_retries` (Finagle's RetryBudget). A window rather than a bucket of saved-up
    tokens: under concurrency many requests start before any retry is due, and a small bucket
    would drop the tokens they earned; a window cannot be saved up past `window_s` either."""

    def __init__(
        self,
        ratio: float,
        min_retries: int,
        *,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._min = min_retries
        self._window_s = window_s
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def on_request(self) -> None:
        now = self._clock()
        self._forget_before(now - self._window_s)  # here too: a healthy server never retries
        self._requests.append(now)

    def try_spend(self) -> bool:
        now = self._clock()
        self._forget_before(now - self._window_s)
        if len(self._retries) >= self._ratio * len(self._requests) + self._min:
            return False
        self._retries.append(now)
        return True

    def _forget_before(self, oldest: float) -> None:
        for times in (self._requests, self._retries):
            while times and times[0] <= oldest:
                times.popleft()


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
    timed_out: int = 0  # tries that ran out of time (mostly hangs before the first token)
    failed: int = 0  # tries that ended in an error, time-outs included


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.name = name or settings.model
        self.settings = settings
        self._retry = settings.retry
        self.breaker = CircuitBreaker(settings.breaker, name=self.name, clock=clock)
        retry = settings.retry
        self._budget = RetryBudget(
            retry.budget_ratio,
            retry.budget_min_retries,
            window_s=retry.budget_window_s,
            clock=clock,
        )
        self.first_token = FirstTokenLimit(settings.timeouts)
        self._rng = rng or random.Random()
        self._sleep = sleep  # the pause before a retry (tests read the delay it is given)
        self.counts = RequestCounts()

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def start(self) -> None:
        await self.inner.start()

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self._counted(
            lambda: self.inner.count_tokens(texts), lambda: [estimate_tokens(t) for t in texts]
        )

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self._counted(
            lambda: self.inner.count_chat_tokens(messages),
            lambda: estimate_chat_tokens(messages),
        )

    async def _counted(self, count: Callable[[], Awaitable[T]], estimate: Callable[[], T]) -> T:
        """The backend's count, or the estimate where it cannot count now: the core counts a
        message before it records it, and a server that is down must not lose the message."""
        if self.breaker.state is BreakerState.OPEN:  # asked, not acquired: counting proves nothing
            return estimate()
        try:
            return await count()
        except BackendError as exc:
            log.info("%s: counting tokens failed, estimated instead: %s", self.name, exc)
            return estimate()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.counts.requests += 1
        self._budget.on_request()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeouts.total_s
        attempt = 0
        full_wait = False
        while True:
            attempt += 1
            shown = False
            try:
                tried = self._attempt(request, attempt, deadline, full_wait=full_wait)
                async with contextlib.aclosing(tried) as chunks:
                    async for chunk in chunks:
                        shown = shown or bool(chunk.text)
                        yield chunk
                return
            except BackendError as exc:
                if shown or not await self._wait_to_retry(exc, attempt, deadline):
                    raise
                # Timed out at the adaptive limit: maybe the server is just slower than it was.
                full_wait = isinstance(exc, FirstTokenTimeout)

    async def _attempt(
        self, request: GenerationRequest, attempt: int, deadline: float, *, full_wait: bool
    ) -> AsyncGenerator[Chunk, None]:
        """One try, bounded by the first-token limit, with the breaker told what it proved."""
        # The try holds back the breaker's judgment of later tries until its first token is
        # due: an answer that takes that long is still a healthy one.
        permit = self.breaker.try_acquire(hold_s=self.first_token.current())
        if permit is None:
            self.counts.refused += 1
            raise CircuitOpen(f"{self.name}: circuit breaker open")
        self.counts.sent += 1
        # The reply's deadline goes with the request (a caller's own, if sooner): a backend
        # that honours it bounds each wait with it, and a chunk costs one timer.
        if request.deadline is not None:
            deadline = min(deadline, request.deadline)
        request = dataclasses.replace(request, deadline=deadline)
        if attempt > 1:  # a fresh id: the engine may still hold the aborted first try
            request = dataclasses.replace(request, request_id=f"{request.request_id}-{attempt}")
        inner = first_token_within(
            self.inner.stream(request), self.first_token, full=full_wait, deadline=deadline,
            deadline_honoured=getattr(self.inner, "honours_deadline", False) is True,
        )  # fmt: skip
        try:
            async with contextlib.aclosing(inner) as chunks:
                async for chunk in chunks:
                    if chunk.text:  # the server answers: what the breaker asks (said once)
                        permit.success()
                    yield chunk
        except ReasoningTooLong:
            # Not a hang: the server streamed the model's reasoning as it came; the prompt
            # made the model reason past max_tokens' worth. Nothing against the server.
            self.counts.failed += 1
            permit.success()
            raise
        except BackendTimeout:
            self.counts.timed_out += 1
            self.counts.failed += 1
            permit.failure()  # a hang is a failure of the server, unlike a 429
            raise
        except BackendError as exc:
            self.counts.failed += 1
            if counts_against_backend(exc):
                permit.failure()  # after its first text: a reply that broke, one failure more
            raise
        else:
            permit.success()  # a reply without text, read to its end
        finally:
            # A try cancelled or closed before its first text (the consumer left) ends at the
            # yield without a verdict: the server did nothing wrong, or right.
            permit.release()

    async def _wait_to_retry(self, exc: BackendError, attempt: int, deadline: float) -> bool:
        """Sleep before the next try and return True, or return False: give up. `deadline` is
        in the loop's time, like the reply's other limits."""
        if not is_retryable(exc) or attempt >= self._retry.attempts:
            return False
        retry_after = exc.retry_after if isinstance(exc, BackendUnavailable) else None
        delay = backoff_s(attempt, retry_after, self._retry, self._rng)
        if asyncio.get_running_loop().time() + delay >= deadline:
            return False
        if not self._budget.try_spend():
            log.info("%s: retry budget spent; not retrying %s", self.name, exc)
            return False
        log.info("%s: retry %d in %.2f s after %s", self.name, attempt, delay, exc)
        self.counts.retries += 1
        await self._sleep(delay)
        return True
