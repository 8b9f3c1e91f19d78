"""A circuit breaker that cuts a backend off only in a sustained outage, and lets it back in
gradually.

    closed     requests pass; each try's verdict is counted
    open       after `failure_threshold` failures in a row, or when `failure_ratio` of the last
               `window` verdicts were failures (once `min_requests` were seen): requests are
               refused at once (a fallback answers) for `open_s`
    half-open  the share of requests let through grows from `ramp_start_share` to all over
               `ramp_s`; the probes are judged together: once `probes_judged` of them answered
               and `failure_ratio` of those failed, it opens again; at the end of the ramp,
               with at least one good probe, it closes

Why not one probe, then all or nothing: a server that comes back under the full load at once
(every user who waited retries) may fall over again, and one bad probe of a server that fails
a share of requests anyway says little. The thresholds are set so that random failures of a
flaky server (say 40% of tries) never open it; a dead one fails every try and opens it within
`min_requests` tries. `openings` counts closed -> open transitions: one per outage, however
often probes reopen it during that outage.

The caller says what each try proved: `record_success`, `record_failure`, or nothing (a 429,
a too-long prompt, a cancelled request). The clock is injectable so tests move time without
sleeping.
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
        self.openings = 0  # closed -> open: how many outages it saw
        # Half-open bookkeeping: passes earned by requests, and the probes' verdicts.
        self._credit = 1.0
        self._probes: list[bool] = []

    @property
    def state(self) -> BreakerState:
        """The state now; the timed moves (open -> half-open -> closed) happen as time is read."""
        if self._state is BreakerState.OPEN and self._since_open() >= self._settings.open_s:
            self._half_open()
        if self._state is BreakerState.HALF_OPEN and self._ramp_done() and any(self._probes):
            self._close()
        return self._state

    def try_acquire(self) -> bool:
        """May a request go out now? Half-open, only the ramp's share of them may."""
        state = self.state
        if state is not BreakerState.HALF_OPEN:
            return state is BreakerState.CLOSED
        # Each request earns the current share of a pass, with at most one pass saved up: the
        # share holds at each moment of the ramp (a cumulative count would let a burst through
        # to catch up), and the first request after a quiet spell passes.
        share = self._share()
        self._credit = min(1.0 + share, self._credit + share)
        if self._credit < 1.0:
            return False
        self._credit -= 1.0
        return True

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return  # a late answer to a request sent before it opened proves little
        if state is BreakerState.HALF_OPEN:
            self._probes.append(True)
            return
        self._failures_in_row = 0
        self._outcomes.append(True)

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.OPEN:
            return  # a late failure of a request sent before it opened: already counted in
        if state is BreakerState.HALF_OPEN:
            self._probes.append(False)
            if self._probes_failing():
                log.info("circuit breaker %s: probes failed, open again", self._name)
                self._open()
            return
        self._failures_in_row += 1
        self._outcomes.append(False)
        if self._should_open():
            self.openings += 1
            log.warning("circuit breaker %s: open (outage %d)", self._name, self.openings)
            self._open()

    def _should_open(self) -> bool:
        s = self._settings
        if self._failures_in_row >= s.failure_threshold:
            return True
        seen = len(self._outcomes)
        failed = seen - sum(self._outcomes)
        return seen >= s.min_requests and failed >= s.failure_ratio * seen

    def _probes_failing(self) -> bool:
        s = self._settings
        seen = len(self._probes)
        failed = seen - sum(self._probes)
        return seen >= s.probes_judged and failed >= s.failure_ratio * seen

    def _share(self) -> float:
        start = self._settings.ramp_start_share
        progress = min(1.0, self._since_half_open() / self._settings.ramp_s)
        return start + (1.0 - start) * progress

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()

    def _half_open(self) -> None:
        self._state = BreakerState.HALF_OPEN
        self._credit = 1.0  # one pass saved up: the first request probes at once
        self._probes = []

    def _close(self) -> None:
        log.info("circuit breaker %s: probes succeeded through the ramp, closed", self._name)
        self._state = BreakerState.CLOSED
        # A closed breaker starts from a clean slate: the outage's failures must not reopen it.
        self._outcomes.clear()
        self._failures_in_row = 0

    def _since_open(self) -> float:
        return self._clock() - self._opened_at

    def _since_half_open(self) -> float:
        return self._since_open() - self._settings.open_s

    def _ramp_done(self) -> bool:
        return self._since_half_open() >= self._settings.ramp_s
