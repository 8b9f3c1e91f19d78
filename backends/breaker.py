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

Each try let through gets a `Permit`, and the caller says on it what the try proved:
`success()`, `failure()`, or `release()` for nothing (a 429, a too-long prompt, a cancelled
request). Closed, the verdicts are judged in the order the tries were let through, not the
order they came back: a burst of concurrent tries returns its fast refusals (a 503 is at once)
before its slower answers, and judged as they came, 20 refusals "in a row" opened the breaker
on a server that answered two tries in three. So a verdict waits for those of the tries let
through before it, each for at most its `hold_s` (the caller's first-token limit): a try that
is slow to answer holds back the judgment of later ones only while it could still be a healthy
answer. Judged late, a verdict counts as it comes. The clock is injectable so tests move time
without sleeping.
"""

from __future__ import annotations

import enum
import heapq
import itertools
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


class Permit:
    """One try let through by a `CircuitBreaker`: say once what it proved. A try that broke
    after its success (a reply cut after its first text) may still say `failure()`; anything
    else said after the first verdict is ignored."""

    __slots__ = ("_breaker", "_done", "_epoch", "_ticket", "_verdict")

    def __init__(self, breaker: CircuitBreaker, ticket: int, epoch: int) -> None:
        self._breaker = breaker
        self._ticket = ticket
        self._epoch = epoch
        self._verdict: bool | None = None
        self._done = False

    def success(self) -> None:
        self._say(True)

    def failure(self) -> None:
        if self._done and self._verdict is True:
            self._verdict = False
            self._breaker._broke_after_success(self._epoch)
            return
        self._say(False)

    def release(self) -> None:
        """No verdict: the try proved nothing about the server (or it has said so already)."""
        self._say(None)

    def _say(self, verdict: bool | None) -> None:
        if not self._done:
            self._done, self._verdict = True, verdict
            self._breaker._resolve(self._ticket, verdict)


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
        # Tries let through, by ticket (their order): closed, those without a verdict and until
        # when each holds back the judgment of later ones, and verdicts waiting for them.
        self._tickets = itertools.count()
        self._waiting: dict[int, float] = {}
        self._settled: list[tuple[int, bool]] = []  # a heap
        self._probing: set[int] = set()  # half-open: the probes without a verdict
        self._epoch = 0  # which state a try was let through in: one more at each change

    @property
    def state(self) -> BreakerState:
        """The state now; the timed moves (open -> half-open -> closed) happen as time is read."""
        if self._state is BreakerState.OPEN and self._since_open() >= self._settings.open_s:
            self._half_open()
        if self._state is BreakerState.HALF_OPEN and self._ramp_done() and any(self._probes):
            self._close()
        return self._state

    def try_acquire(self, hold_s: float = 0.0) -> Permit | None:
        """A permit for a try now, or None: refused. `hold_s`: how long the try's verdict may
        hold back the judgment of tries let through after it (see the module's docstring)."""
        if self._state is BreakerState.CLOSED:
            self._judge_settled()  # verdicts whose holds ran out since the last one came
        state = self.state
        if state is BreakerState.OPEN:
            return None
        if state is BreakerState.CLOSED:
            ticket = next(self._tickets)
            self._waiting[ticket] = self._clock() + hold_s
            return Permit(self, ticket, self._epoch)
        # Each request earns the current share of a pass, with at most one pass saved up: the
        # share holds at each moment of the ramp (a cumulative count would let a burst through
        # to catch up), and the first request after a quiet spell passes.
        share = self._share()
        self._credit = min(1.0 + share, self._credit + share)
        if self._credit < 1.0:
            return None
        self._credit -= 1.0
        ticket = next(self._tickets)
        self._probing.add(ticket)
        return Permit(self, ticket, self._epoch)

    def _resolve(self, ticket: int, verdict: bool | None) -> None:
        """A try's verdict. One let through before the state last changed proves little about
        the state now (an answer sent before an outage, a failure already counted in): it is
        ignored."""
        state = self.state
        if ticket in self._probing:
            self._probing.discard(ticket)
            if verdict is not None and state is BreakerState.HALF_OPEN:
                self._probe_verdict(verdict)
            return
        if self._waiting.pop(ticket, None) is None or state is not BreakerState.CLOSED:
            return
        if verdict is not None:
            heapq.heappush(self._settled, (ticket, verdict))
        self._judge_settled()

    def _broke_after_success(self, epoch: int) -> None:
        """A try that had proved a success failed after all (its reply broke): one failure
        more, as it comes, if the breaker is in the state it let the try through in."""
        state = self.state
        if epoch != self._epoch:
            return
        if state is BreakerState.CLOSED:
            self._judge(False)
        elif state is BreakerState.HALF_OPEN:
            self._probe_verdict(False)

    def _judge_settled(self) -> None:
        """Judge, in ticket order, the verdicts no earlier try holds back any longer."""
        if not self._settled:
            return
        now = self._clock()
        # `_waiting` is in ticket order (tickets grow, each added when taken); the tries still
        # waiting past their hold (hung ones) are few, bounded by the requests in flight.
        holder = next((ticket for ticket, until in self._waiting.items() if until > now), None)
        while self._settled and (holder is None or self._settled[0][0] < holder):
            self._judge(heapq.heappop(self._settled)[1])
            if self._state is not BreakerState.CLOSED:
                return

    def _judge(self, verdict: bool) -> None:
        if verdict:
            self._failures_in_row = 0
            self._outcomes.append(True)
            return
        self._failures_in_row += 1
        self._outcomes.append(False)
        if self._should_open():
            self.openings += 1
            log.warning("circuit breaker %s: open (outage %d)", self._name, self.openings)
            self._open()

    def _probe_verdict(self, verdict: bool) -> None:
        self._probes.append(verdict)
        if not verdict and self._probes_failing():
            log.info("circuit breaker %s: probes failed, open again", self._name)
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
        self._forget_tries()

    def _forget_tries(self) -> None:
        """The tries in flight were let through in another state: their verdicts are ignored."""
        self._epoch += 1
        self._waiting.clear()
        self._settled.clear()
        self._probing.clear()

    def _half_open(self) -> None:
        self._state = BreakerState.HALF_OPEN
        self._credit = 1.0  # one pass saved up: the first request probes at once
        self._probes = []
        self._forget_tries()

    def _close(self) -> None:
        log.info("circuit breaker %s: probes succeeded through the ramp, closed", self._name)
        self._state = BreakerState.CLOSED
        # A closed breaker starts from a clean slate: the outage's failures must not reopen it.
        self._outcomes.clear()
        self._failures_in_row = 0
        self._forget_tries()

    def _since_open(self) -> float:
        return self._clock() - self._opened_at

    def _since_half_open(self) -> float:
        return self._since_open() - self._settings.open_s

    def _ramp_done(self) -> bool:
        return self._since_half_open() >= self._settings.ramp_s
