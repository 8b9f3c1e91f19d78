"""A circuit breaker: stop sending requests to a backend that keeps failing, probe it later.

    closed     requests pass; failures are counted
    open       after `failure_threshold` failures in a row, or `failure_ratio` of the last
               `window` requests failed: requests are refused at once (a fallback answers)
    half-open  after `open_s`: one probe request passes, the rest are refused; a good probe
               closes the breaker, a bad one opens it for another `open_s`

Counted per request attempt, so a retry that fails counts too. The clock is injectable so
tests can move time without sleeping.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable

from bot.settings import BreakerSettings

log = logging.getLogger(__name__)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        settings: BreakerSettings,
        *,
        name: str = "backend",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._name = name
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._outcomes: deque[bool] = deque(maxlen=settings.window)
        self._failures_in_row = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._cool_down_over():
            return BreakerState.HALF_OPEN
        return self._state

    def try_acquire(self) -> bool:
        """May a request go out now? In half-open, only the one probe may."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._state = BreakerState.HALF_OPEN
            self._probing = True
            return True
        return False

    def release(self) -> None:
        """The request ended without a verdict (cancelled, or the prompt was at fault)."""
        self._probing = False

    def record_success(self) -> None:
        if self._state is BreakerState.OPEN:
            return  # a late answer to a request sent before it opened proves little
        if self._state is BreakerState.HALF_OPEN:
            log.info("circuit breaker %s: probe succeeded, closed", self._name)
        self._state = BreakerState.CLOSED
        self._probing = False
        self._failures_in_row = 0
        self._outcomes.append(True)

    def record_failure(self) -> None:
        self._probing = False
        self._failures_in_row += 1
        self._outcomes.append(False)
        if self._state is BreakerState.HALF_OPEN or self._should_open():
            self._open()

    def _should_open(self) -> bool:
        s = self._settings
        if self._failures_in_row >= s.failure_threshold:
            return True
        seen = len(self._outcomes)
        failed = seen - sum(self._outcomes)
        return seen >= s.min_requests and failed >= s.failure_ratio * seen

    def _open(self) -> None:
        if self._state is not BreakerState.OPEN:
            log.warning("circuit breaker %s: open for %.1f s", self._name, self._settings.open_s)
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        # A closed breaker starts from a clean slate: old failures must not reopen it at once.
        self._outcomes.clear()
        self._failures_in_row = 0

    def _cool_down_over(self) -> bool:
        return self._clock() - self._opened_at >= self._settings.open_s
