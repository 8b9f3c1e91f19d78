"""Parley's Prometheus metrics, on a registry owned by one `Metrics` object (one per app).

    parley_turns_total{platform,skill,outcome}        answered | failed | refused | limited |
                                                      deferred
    parley_turn_duration_seconds{platform,skill}      histogram, whole turn
    parley_turn_first_token_seconds{platform,skill}   histogram, turn start -> first text out
    parley_tokens_total{platform,direction}           in (prompt) | out (completion)
    parley_budget_tokens_total{platform,kind}         prompt | completion: every model call of
                                                      a turn (skills, summaries), as budgeted
    parley_budget_refused_total{platform,budget}      turns refused: user | site budget used up
    parley_backend_requests_total{backend}            replies asked of the backend
    parley_backend_tries_total{backend}               tries sent (first tries and retries)
    parley_backend_retries_total{backend}
    parley_backend_errors_total{backend}              tries that failed (time-outs included)
    parley_backend_timeouts_total{backend}
    parley_backend_refused_total{backend}             refused at once by the open breaker
    parley_backend_fallbacks_total                    answers that came from a fallback
    parley_backend_breaker_state{backend}             0 closed, 1 half-open, 2 open
    parley_backend_breaker_openings_total{backend}    outages
    parley_platform_api_calls_total{platform}         calls to the platform's API
    parley_platform_throttled_total{platform}         429 answers (re-sent after Retry-After)
    parley_pending_messages                           unanswered user messages (SQL, all workers)
    parley_pending_oldest_age_seconds                 age of the oldest of them
    parley_turns_running                              conversations running turns (worker)
    parley_turns_waiting{queue}                       waiting for a place: new | backlog

The manager reports turns through the `TurnObserver` protocol. The backends and the
platforms' rate limiters keep their own plain counters (`RequestCounts`, `CircuitBreaker.openings`,
`FloodGate.retries_after_429`); they are copied into Prometheus counters as deltas at the end
of each turn and on each scrape, rather than read by a custom collector, because a custom
collector's values would not reach the files of the library's multiprocess mode. The pending
gauges query SQL on scrape (`refresh`), one indexed query; the turn gauges read the manager's
counts (`TurnSlots`) with the pools.

Multiprocess mode (several workers on one machine behind one scrape target): set
`PROMETHEUS_MULTIPROC_DIR` to an empty directory shared by the workers before they start;
`exposition()` then aggregates every worker's files (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from backends.base import Usage
from backends.breaker import BreakerState
from backends.fallback import FallbackChain
from backends.resilience import ResilientBackend
from bot.errors import ConfigError
from bot.logcontext import TurnScope, turn_scope
from bot.skills.router import CommandRouter, parse_command
from bot.storage.base import MessageKind, Store, StoredMessage
from bot.types import ConversationKey

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Room a worker's metric files need at first: prometheus-client maps five files of 64 KiB
# (counters, three kinds of gauge, histograms), which grow by doubling.
MULTIPROC_ROOM_BYTES = 1 << 20
# Seconds between a worker's own readings in multiprocess mode: within a usual scrape period.
LOCAL_REFRESH_S = 5.0
# Chat turns take seconds (streamed answers of a few hundred tokens); commands milliseconds.
TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
FIRST_TOKEN_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# Seconds the scrape's one SQL query may take: well under Prometheus' default scrape timeout
# (10 s), like bot.readiness' checks.
PENDING_QUERY_TIMEOUT_S = 2.0
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# A command name is the user's text: only registered ones become a label value, so a user
# typing /anything cannot create series without bound.
UNKNOWN_COMMAND = "unknown_command"


class TurnObserver(Protocol):
    """What the conversation manager reports; `NullObserver` when metrics are off."""

    def turn_finished(self, scope: TurnScope) -> None: ...

    def first_token(self, scope: TurnScope) -> None: ...

    def tokens(self, platform: str, usage: Usage) -> None: ...

    def refused(self, platform: str) -> None: ...


class NullObserver:
    def turn_finished(self, scope: TurnScope) -> None:
        return None

    def first_token(self, scope: TurnScope) -> None:
        return None

    def tokens(self, platform: str, usage: Usage) -> None:
        return None

    def refused(self, platform: str) -> None:
        return None


@runtime_checkable
class PlatformCounts(Protocol):
    """A platform's outbound rate limiter (adapters.telegram.limits.FloodGate)."""

    api_calls: int
    retries_after_429: int


@runtime_checkable
class TurnSlots(Protocol):
    """The manager's places for turns (bot.conversation.manager: conversation.max_turns)."""

    def turns_running(self) -> int: ...

    def turns_waiting(self) -> Mapping[str, int]: ...


@contextmanager
def observed_turn(
    observer: TurnObserver,
    key: ConversationKey,
    batch: list[StoredMessage],
    router: CommandRouter,
) -> Iterator[TurnScope]:
    """One turn of the manager: its log context, and its metrics once it ends. An exception
    out of the turn makes it "failed" (its messages stay pending and are retried)."""
    with turn_scope(key, batch[-1].id, skill=turn_kind(batch, router)) as scope:
        if batch[0].kind is MessageKind.LIMITED:
            scope.outcome = "limited"
        try:
            yield scope
        except BaseException:
            if scope.outcome != "deferred":  # set by the manager: to run again, no failure
                scope.outcome = "failed"
            raise
        finally:
            observer.turn_finished(scope)


def turn_kind(batch: list[StoredMessage], router: CommandRouter) -> str:
    first = batch[0]
    if first.kind is MessageKind.LIMITED:
        return "limited"
    if first.kind is MessageKind.AGENT:  # a help-desk agent's reply (bot.handoff)
        return "agent"
    if first.kind is MessageKind.COMMAND:
        parsed = parse_command(first.content)
        if parsed is None or router.get(parsed[0]) is None:
            return UNKNOWN_COMMAND
        return parsed[0]
    return "chat"


@dataclasses.dataclass(slots=True)
class _Seen:
    """The last value of each plain counter copied into Prometheus, per source object (by
    identity: two fallbacks may share a model name)."""

    values: dict[tuple[int, str], int] = dataclasses.field(default_factory=dict)

    def delta(self, source: object, name: str, now: int) -> int:
        before = self.values.get((id(source), name), 0)
        self.values[(id(source), name)] = now
        return max(0, now - before)


def multiprocess_mode() -> bool:
    """Whether the workers' metrics are aggregated from files (PROMETHEUS_MULTIPROC_DIR)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """Parley's metrics on `registry` (a new one by default), and the sources it reads."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        problem = multiprocess_problem()
        if problem:  # the library would fail on its first file, with a traceback
            raise ConfigError(problem)
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.turns = Counter(
            "parley_turns", "Turns by outcome", ["platform", "skill", "outcome"], registry=r
        )
        self.turn_seconds = Histogram(
            "parley_turn_duration_seconds",
            "Time from a turn's start to its recorded answer",
            ["platform", "skill"],
            buckets=TURN_BUCKETS,
            registry=r,
        )
        self.first_token_seconds = Histogram(
            "parley_turn_first_token_seconds",
            "Time from a turn's start to its first text handed to the platform",
            ["platform", "skill"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens_total = Counter(
            "parley_tokens", "Model tokens, in (prompt) and out", ["platform", "direction"],
            registry=r,
        )  # fmt: skip
        self.budget_tokens_total = Counter(
            "parley_budget_tokens", "Model tokens counted against budgets, skills included",
            ["platform", "kind"], registry=r,
        )  # fmt: skip
        self.budget_refused_total = Counter(
            "parley_budget_refused", "Turns refused because a daily token budget was used up",
            ["platform", "budget"], registry=r,
        )  # fmt: skip
        self._backend_counters = {
            name: Counter(f"parley_backend_{name}", doc, ["backend"], registry=r)
            for name, doc in (
                ("requests", "Replies asked of the backend"),
                ("tries", "Tries sent to the backend, retries included"),
                ("retries", "Retries"),
                ("errors", "Tries that failed"),
                ("timeouts", "Tries that ran out of time"),
                ("refused", "Requests refused at once by the open circuit breaker"),
                ("breaker_openings", "Times the circuit breaker opened (outages)"),
            )
        }
        self.fallbacks = Counter(
            "parley_backend_fallbacks", "Answers that came from a fallback backend", registry=r
        )
        # livemax: across workers, the worst state any live worker's breaker is in.
        self.breaker_state = Gauge(
            "parley_backend_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["backend"], multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        self.handoffs = Counter(
            "parley_handoffs", "Conversations handed to a person, by trigger (bot.handoff)",
            ["platform", "reason"], registry=r,
        )  # fmt: skip
        self.api_calls = Counter(
            "parley_platform_api_calls", "Calls to the platform's API", ["platform"], registry=r
        )
        self.throttled = Counter(
            "parley_platform_throttled", "429 answers from the platform's API", ["platform"],
            registry=r,
        )  # fmt: skip
        # Every worker reads the same SQL: the most recent reading is the answer.
        self.pending = Gauge(
            "parley_pending_messages", "Unanswered user messages (all workers)",
            multiprocess_mode="livemostrecent", registry=r,
        )  # fmt: skip
        self.pending_age = Gauge(
            "parley_pending_oldest_age_seconds", "Age of the oldest unanswered user message",
            multiprocess_mode="livemostrecent", registry=r,
        )  # fmt: skip
        self.db_connections = Gauge(
            "parley_db_connections",
            "This worker's pooled database connections, by pool (main: durable writes and "
            "reads; relaxed: writes that do not wait for the disk) and state",
            ["pool", "state"], multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.turns_running = Gauge(
            "parley_turns_running",
            "Conversations running turns in this worker (at most conversation.max_turns)",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.turns_waiting = Gauge(
            "parley_turns_waiting",
            "Conversations waiting for a place to run their turns in this worker, by queue "
            "(new: brought by a new message; backlog: found by the recovery or the sweep)",
            ["queue"], multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self._backends: list[ResilientBackend] = []
        self._chains: list[FallbackChain] = []
        self._platforms: dict[str, PlatformCounts] = {}
        self._store: Store | None = None
        self._pools: dict[str, QueuePool] = {}
        self._slots: TurnSlots | None = None
        self._seen = _Seen()

    # -- sources ---------------------------------------------------------------------------

    def watch_backend(self, backend: object) -> None:
        """Read the counters of a `ResilientBackend`, or of each member of a `FallbackChain`
        (other backends, a test's scripted one, have none to read)."""
        if isinstance(backend, FallbackChain):
            self._chains.append(backend)
            self._backends.extend(backend.backends)
        elif isinstance(backend, ResilientBackend):
            self._backends.append(backend)

    def watch_adapter(self, adapter: object) -> None:
        """Read an adapter's outbound rate limiter, where it has one (its `gate`)."""
        gate = getattr(adapter, "gate", None)
        platform = getattr(adapter, "platform", "")
        if isinstance(gate, PlatformCounts) and platform:
            self._platforms[platform] = gate

    def watch_store(self, store: Store, pools: Mapping[str, AsyncEngine]) -> None:
        """Count pending messages through `store`; report the pool of each of `pools`
        (`SqlStore.pools`: main, relaxed and keeper, each engine once)."""
        self._store = store
        for name, each in pools.items():
            # An in-memory SQLite database has one connection in a StaticPool: nothing to show.
            if isinstance(each.pool, QueuePool):
                self._pools[name] = each.pool

    def watch_turns(self, slots: TurnSlots) -> None:
        """Report the turns `slots` (the conversation manager) runs and keeps waiting."""
        self._slots = slots

    # -- TurnObserver ----------------------------------------------------------------------

    def turn_finished(self, scope: TurnScope) -> None:
        self.turns.labels(scope.platform, scope.skill, scope.outcome).inc()
        if scope.outcome != "limited":
            elapsed = time.monotonic() - scope.started
            self.turn_seconds.labels(scope.platform, scope.skill).observe(elapsed)
        self.sync()

    def first_token(self, scope: TurnScope) -> None:
        if scope.first_token_at is not None:
            return
        scope.first_token_at = time.monotonic()
        elapsed = scope.first_token_at - scope.started
        self.first_token_seconds.labels(scope.platform, scope.skill).observe(elapsed)

    def tokens(self, platform: str, usage: Usage) -> None:
        self.tokens_total.labels(platform, "in").inc(usage.prompt_tokens)
        self.tokens_total.labels(platform, "out").inc(usage.completion_tokens)

    def refused(self, platform: str) -> None:
        self.turns.labels(platform, "none", "refused").inc()

    # -- bot.budget.BudgetObserver ---------------------------------------------------------

    def budget_tokens(self, platform: str, usage: Usage) -> None:
        self.budget_tokens_total.labels(platform, "prompt").inc(usage.prompt_tokens)
        self.budget_tokens_total.labels(platform, "completion").inc(usage.completion_tokens)

    def budget_refused(self, platform: str, scope: str) -> None:
        self.budget_refused_total.labels(platform, scope).inc()

    # -- bot.handoff ------------------------------------------------------------------------

    def handoff(self, platform: str, reason: str) -> None:
        self.handoffs.labels(platform, reason).inc()

    # -- scrape ----------------------------------------------------------------------------

    def sync(self) -> None:
        """Copy the sources' plain counters into Prometheus (as increments since last time)."""
        for backend in self._backends:
            self._sync_backend(backend)
        for chain in self._chains:
            self.fallbacks.inc(self._seen.delta(chain, "fallbacks", chain.fallbacks))
        for platform, gate in self._platforms.items():
            self.api_calls.labels(platform).inc(self._seen.delta(gate, "calls", gate.api_calls))
            throttled = self._seen.delta(gate, "429", gate.retries_after_429)
            self.throttled.labels(platform).inc(throttled)

    def _sync_backend(self, backend: ResilientBackend) -> None:
        counts = backend.counts
        values = {
            "requests": counts.requests,
            "tries": counts.sent,
            "retries": counts.retries,
            "errors": counts.failed,
            "timeouts": counts.timed_out,
            "refused": counts.refused,
            "breaker_openings": backend.breaker.openings,
        }
        for name, value in values.items():
            increase = self._seen.delta(backend, name, value)
            self._backend_counters[name].labels(backend.name).inc(increase)
        self.breaker_state.labels(backend.name).set(BREAKER_VALUES[backend.breaker.state])

    def refresh_local(self) -> None:
        """What this worker alone can read: its plain counters and its pools (no SQL)."""
        self.sync()
        for name, pool in self._pools.items():
            self.db_connections.labels(name, "in_use").set(pool.checkedout())
            self.db_connections.labels(name, "idle").set(pool.checkedin())
        if self._slots is not None:
            self.turns_running.set(self._slots.turns_running())
            for queue, count in self._slots.turns_waiting().items():
                self.turns_waiting.labels(queue).set(count)

    async def publish_local(self) -> None:
        """In multiprocess mode, `refresh_local` every LOCAL_REFRESH_S until cancelled: a scrape
        runs `refresh` in the one worker it reaches, so the others' pools showed their
        start-up values and their breakers' states changed only when one of their turns
        ended (a helper's walkthrough: 10 idle connections shown, 32 open)."""
        while True:
            try:
                self.refresh_local()
            except Exception as exc:  # a full disk under the files: tried again, said once
                log.warning("metrics not published: %s", type(exc).__name__, exc_info=True)
            await asyncio.sleep(LOCAL_REFRESH_S)

    async def refresh(self) -> None:
        """What is read at scrape time: the plain counters, the pools, the pending messages."""
        self.refresh_local()
        if self._store is None:
            return
        try:
            # Bounded: a database that does not answer (a partition drops packets; a connect
            # waits 60 s) must not hold the scrape past Prometheus' own time limit, which
            # would lose every metric, the breaker's and the backends' too, during the outage.
            async with asyncio.timeout(PENDING_QUERY_TIMEOUT_S):
                count, oldest = await self._store.pending_stats()
        except Exception as exc:  # a scrape must still answer while the database is down
            reason = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("pending messages not measured: %s", reason)
            # Unknown, not the last reading: a dashboard must not show an empty queue (0)
            # through an outage of the database that holds it.
            self.pending.set(math.nan)
            self.pending_age.set(math.nan)
            return
        self.pending.set(count)
        self.pending_age.set(_age_s(oldest))

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type; every worker's values in multiprocess mode."""
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # untyped upstream
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def multiprocess_problem() -> str | None:
    """Why multiprocess mode cannot work, or None: its directory must exist and be writable
    before the first metric is made (a directory under /run is gone after a reboot)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return None
    if not os.path.isdir(folder):
        return f"{MULTIPROC_ENV}: {folder} is not a directory; create it (empty) first"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{MULTIPROC_ENV}: {folder} is not writable by this user"
    return _no_room(folder)


def _no_room(folder: str) -> str | None:
    """Why `folder` has no room for a worker's metric files, or None. prometheus-client
    writes them through memory maps: on a full disk (a tmpfs, as it often is) the first
    write to a map kills the process with SIGBUS, without a word. So the room is taken for
    a moment first, in a file the collector does not read (it reads `*.db`)."""
    probe = os.path.join(folder, f".parley-room-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        return f"{MULTIPROC_ENV}: {folder}: cannot create a file there ({exc.strerror})"
    try:
        os.posix_fallocate(fd, 0, MULTIPROC_ROOM_BYTES)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return (
                f"{MULTIPROC_ENV}: {folder} has no room for the metrics' files "
                f"({exc.strerror}); free some, or give it more"
            )
        # EOPNOTSUPP, EINVAL: a file system that cannot say; the maps will tell
    except AttributeError:  # no posix_fallocate (macOS)
        pass
    finally:
        os.close(fd)
        os.unlink(probe)
    return None


def _age_s(oldest: datetime | str | None) -> float:
    if oldest is None:
        return 0.0
    if isinstance(oldest, str):  # SQLite without type information in an aggregate
        oldest = datetime.fromisoformat(oldest)
    if oldest.tzinfo is None:  # SQLite's CURRENT_TIMESTAMP is UTC without a zone
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - oldest).total_seconds())
