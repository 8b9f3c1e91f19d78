"""Retries, retry budget, time limits, circuit breaker and fallback against tests/fault_server.py,
a real HTTP server with seeded faults. The load test (500 turns) is in test_resilience_load.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from backends.base import Chunk, GenerationRequest
from backends.breaker import BreakerState, CircuitBreaker
from backends.deadlines import FirstTokenLimit, FirstTokenTimeout
from backends.fallback import FallbackChain
from backends.openai_compat import OpenAICompatBackend
from backends.resilience import ResilientBackend, RetryBudget, backoff_s
from bot.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ContextTooLong,
)
from bot.settings import BackendSettings, BreakerSettings, RetrySettings
from bot.types import ChatMessage, Role
from tests.fault_server import MODEL, Faults, FaultServer, fault_server

FAST_RETRY = {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_retry_after_s": 0.2}
# Far above what a healthy local server needs (the server runs in a thread of this process,
# so a loaded machine slows both sides); tests of a hang set the limit they prove.
LOW_TIMEOUTS = {"first_token_s": 2.0, "gap_s": 2.0, "total_s": 3.0, "connect_s": 2.0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not keep an old narrowing across actions


def settings_for(server: FaultServer, **extra: object) -> BackendSettings:
    values: dict[str, object] = {
        "kind": "openai",
        "base_url": server.base_url,
        "model": MODEL,
        "timeouts": LOW_TIMEOUTS,
        "retry": FAST_RETRY,
    }
    return BackendSettings.model_validate({**values, **extra})


def resilient(
    server: FaultServer, clock: FakeClock | None = None, **extra: object
) -> ResilientBackend:
    settings = settings_for(server, **extra)
    kwargs = {"clock": clock} if clock else {}
    return ResilientBackend(
        OpenAICompatBackend(settings), settings, name=server.name, rng=random.Random(1), **kwargs
    )


def ask(text: str = "hello") -> GenerationRequest:
    return GenerationRequest([ChatMessage(Role.USER, text)], max_tokens=6)


async def collect(backend: ResilientBackend | FallbackChain) -> list[Chunk]:
    async with aclosing(backend.stream(ask())) as chunks:
        return [chunk async for chunk in chunks]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


@pytest.fixture
def primary() -> Iterator[FaultServer]:
    with fault_server("primary") as server:
        yield server


@pytest.fixture
def backup() -> Iterator[FaultServer]:
    with fault_server("backup") as server:
        yield server


# --- pure parts ---------------------------------------------------------------------------------


def test_backoff_is_jittered_capped_and_honours_retry_after() -> None:
    settings = RetrySettings(base_delay_s=0.1, max_delay_s=0.4, max_retry_after_s=2.0)
    rng = random.Random(3)
    delays = [backoff_s(n, None, settings, rng) for n in range(1, 8) for _ in range(20)]
    assert all(0 <= d <= 0.4 for d in delays) and len(set(delays)) > 100
    assert backoff_s(1, 1.5, settings, rng) == 1.5
    assert backoff_s(1, 60, settings, rng) == 2.0  # a huge Retry-After is capped


def test_retry_budget_allows_a_share_of_requests() -> None:
    clock = FakeClock()  # all in one window, however slow the machine
    budget = RetryBudget(ratio=0.2, min_retries=3, window_s=10.0, clock=clock)
    spent = 0
    for _ in range(100):
        budget.on_request()
        spent += budget.try_spend()
    assert spent == 23  # 0.2 x 100 requests + 3
    assert not budget.try_spend()  # spent: the next retry waits for requests or the window
    clock.now += 10.0  # the window passed: what it counted is forgotten
    budget.on_request()
    assert budget.try_spend()


def verdict(breaker: CircuitBreaker, ok: bool) -> bool:
    """One try, let through and judged at once; False: it was refused."""
    permit = breaker.try_acquire()
    if permit is None:
        return False
    permit.success() if ok else permit.failure()
    return True


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FakeClock()
    settings = BreakerSettings(failure_threshold=3, open_s=10, ramp_s=10, probes_judged=3)
    breaker = CircuitBreaker(settings, clock=clock)
    for _ in range(3):
        assert verdict(breaker, False)
    assert state(breaker) is BreakerState.OPEN and breaker.try_acquire() is None
    clock.now += 10
    first_probe = breaker.try_acquire()
    assert first_probe is not None
    assert breaker.try_acquire() is None  # the ramp starts at a tenth of the requests
    first_probe.failure()
    assert state(breaker) is BreakerState.HALF_OPEN  # one bad probe says little ...
    clock.now += 5  # half-way through the ramp: about every other request probes
    probes = [breaker.try_acquire() for _ in range(4)]
    passed = [probe for probe in probes if probe is not None]
    assert len(passed) == 2
    for probe in passed:
        probe.failure()
    assert state(breaker) is BreakerState.OPEN  # ... three of three do
    clock.now += 10
    assert verdict(breaker, True)
    assert state(breaker) is BreakerState.HALF_OPEN  # closed only at the end of the ramp
    clock.now += 10
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.openings == 1  # one outage, however often the probes reopened it


def test_half_open_lets_traffic_back_gradually() -> None:
    clock = FakeClock()
    settings = BreakerSettings(failure_threshold=1, open_s=5, ramp_s=10, ramp_start_share=0.1)
    breaker = CircuitBreaker(settings, clock=clock)
    verdict(breaker, False)
    clock.now += 5
    shares = []
    for _ in range(4):  # 100 requests at 0, 2.5, 5 and 7.5 s into the ramp
        shares.append(sum(verdict(breaker, True) for _ in range(100)))
        clock.now += 2.5
    assert shares == sorted(shares) and shares[0] <= 15 and 40 <= shares[-1] < 100
    assert state(breaker) is BreakerState.CLOSED  # at 10 s, after good probes


def test_random_failures_never_open_the_default_breaker_an_outage_does_fast() -> None:
    breaker = CircuitBreaker(BreakerSettings())
    rng = random.Random(5)
    for _ in range(5000):  # a flaky server: 40% of the tries that count fail, at random
        verdict(breaker, rng.random() >= 0.4)
    assert breaker.openings == 0 and state(breaker) is BreakerState.CLOSED
    tries = 0
    while state(breaker) is BreakerState.CLOSED:
        verdict(breaker, False)
        tries += 1
    assert tries <= BreakerSettings().min_requests and breaker.openings == 1


def test_breaker_opens_on_failure_ratio() -> None:
    settings = BreakerSettings(failure_threshold=100, failure_ratio=0.5, window=10, min_requests=10)
    breaker = CircuitBreaker(settings)
    for i in range(10):
        verdict(breaker, i % 2 == 0)
    assert state(breaker) is BreakerState.OPEN


def test_a_burst_is_judged_in_the_order_its_tries_went_out() -> None:
    """80 tries at once against a server that refuses a third of them at random: the refusals
    come back first (a 503 is at once, an answer streams), and judged as they came back they
    were 29 failures "in a row". Judged in the order the tries went out, they are a third."""
    rng = random.Random(7)
    refused = [rng.random() < 0.35 for _ in range(80)]
    assert sum(refused) >= BreakerSettings().failure_threshold  # enough for a run of 20
    for hold_s, opens in ((5.0, 0), (0.0, 1)):  # (0: no hold, the verdicts judged as they come)
        clock = FakeClock()
        breaker = CircuitBreaker(BreakerSettings(), clock=clock)
        permits = [breaker.try_acquire(hold_s=hold_s) for _ in refused]
        for permit, failed in zip(permits, refused, strict=True):
            if failed and permit is not None:
                permit.failure()
        clock.now += 0.2
        for permit, failed in zip(permits, refused, strict=True):
            if not failed and permit is not None:
                permit.success()
        assert breaker.openings == opens


def test_a_slow_try_holds_back_an_outage_only_until_its_first_token_was_due() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(BreakerSettings(), clock=clock)
    slow = breaker.try_acquire(hold_s=5.0)  # sent just before the outage, still waiting
    assert slow is not None
    for _ in range(BreakerSettings().failure_threshold):  # then the server refuses everything
        assert verdict(breaker, False)
    assert state(breaker) is BreakerState.CLOSED  # the slow try might still answer
    clock.now += 5.0
    assert breaker.try_acquire() is None  # it did not in time: the outage is judged, open
    assert breaker.openings == 1
    slow.success()  # a late answer from before the outage changes nothing
    assert state(breaker) is BreakerState.OPEN


def test_a_reply_that_broke_after_its_first_text_counts_one_failure_more() -> None:
    settings = BreakerSettings(failure_threshold=2)
    breaker = CircuitBreaker(settings)
    permit = breaker.try_acquire()
    assert permit is not None
    permit.success()
    permit.success()  # said once
    permit.failure()  # the reply was cut
    permit.failure()  # still one failure
    assert state(breaker) is BreakerState.CLOSED
    assert verdict(breaker, False) and state(breaker) is BreakerState.OPEN


async def test_a_burst_against_a_flaky_server_leaves_the_breaker_closed() -> None:
    """Through the retry layer: refusals at once, answers after a pause, 80 tries at once.
    Judged as they came back, the refusals opened the breaker (a double: the order of the
    replies is what this test sets, and a real server under load gives it only sometimes)."""

    class Flaky:
        honours_deadline = False

        def __init__(self) -> None:
            self.rng = random.Random(7)
            self.answer = asyncio.Event()

        async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
            await asyncio.sleep(0)
            if self.rng.random() < 0.35:
                raise BackendUnavailable("overloaded", status=503)
            await self.answer.wait()
            yield Chunk("an answer")

    backend_settings = BackendSettings.model_validate(
        {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1",
         "retry": {"attempts": 1}}
    )  # fmt: skip
    inner = Flaky()
    backend = ResilientBackend(inner, backend_settings)  # type: ignore[arg-type]

    async def ask() -> bool:
        request = GenerationRequest([ChatMessage(Role.USER, "a question")], max_tokens=4)
        try:
            async with aclosing(backend.stream(request)) as chunks:
                return bool([chunk async for chunk in chunks])
        except BackendError:
            return False

    asking = [asyncio.create_task(ask()) for _ in range(80)]
    for _ in range(5):
        await asyncio.sleep(0)  # every refusal is in
    inner.answer.set()
    answered = sum(await asyncio.gather(*asking))
    assert backend.counts.failed >= BreakerSettings().failure_threshold
    assert answered == 80 - backend.counts.failed and backend.breaker.openings == 0


# --- against the fault server -------------------------------------------------------------------


async def test_503_and_429_are_retried(primary: FaultServer) -> None:
    primary.configure(Faults(unavailable=0.5, throttled=0.5, seed=1))
    backend = resilient(primary, retry={**FAST_RETRY, "attempts": 2})
    with pytest.raises(BackendUnavailable) as caught:
        await collect(backend)
    assert caught.value.status in (429, 503)
    assert primary.chat_requests == 2  # one try, one retry
    primary.configure(Faults())
    assert text_of(await collect(backend)).startswith("primary-3:")
    await backend.aclose()


async def test_retry_after_is_honoured(primary: FaultServer) -> None:
    primary.configure(Faults(throttled=1.0, retry_after_s=0.15))
    settings = settings_for(primary, retry={**FAST_RETRY, "attempts": 2})
    pauses: list[float] = []

    async def sleep(delay: float) -> None:
        pauses.append(delay)
        await asyncio.sleep(delay)

    backend = ResilientBackend(
        OpenAICompatBackend(settings), settings, rng=random.Random(1), sleep=sleep
    )
    with pytest.raises(BackendUnavailable):
        await collect(backend)
    # The one retry waited what the server asked, not the jittered pause (at most 0.01 s).
    assert pauses == [0.15] and primary.chat_requests == 2
    await backend.aclose()


async def test_retry_budget_protects_a_failing_server(primary: FaultServer) -> None:
    primary.configure(Faults(unavailable=1.0))
    # All 50 in one budget window, however slow a loaded machine makes them (a window that
    # rolled over midway granted its budget again: 106 requests seen under load).
    backend = resilient(
        primary,
        breaker={"failure_threshold": 1000, "min_requests": 1000},
        retry={**FAST_RETRY, "budget_window_s": 600},
    )
    for _ in range(50):
        with pytest.raises(BackendUnavailable):
            await collect(backend)
    # Whatever fails, at most (1 + budget_ratio) x the requests (2x by default).
    retry = RetrySettings()
    assert primary.chat_requests <= 50 * (1 + retry.budget_ratio) + retry.budget_min_retries
    await backend.aclose()


async def test_429_is_back_pressure_not_a_failure(primary: FaultServer) -> None:
    primary.configure(Faults(throttled=1.0, retry_after_s=0.01))
    backend = resilient(primary, retry={**FAST_RETRY, "attempts": 1})
    for _ in range(3 * BreakerSettings().min_requests):
        with pytest.raises(BackendUnavailable):
            await collect(backend)
    assert state(backend.breaker) is BreakerState.CLOSED
    await backend.aclose()


async def test_a_hang_is_given_up_at_the_adaptive_limit_and_retried_with_the_full_one(
    primary: FaultServer,
) -> None:
    timeouts = {**LOW_TIMEOUTS, "first_token_s": 1.0, "first_token_min_s": 0.1}
    backend = resilient(primary, timeouts=timeouts, retry={**FAST_RETRY, "attempts": 2})
    for _ in range(FirstTokenLimit.MIN_SAMPLES):  # first-token times of a healthy server
        await collect(backend)
    # Adapted below the full second: its floor (0.1 s), or 4x the p90 where a loaded machine
    # made the healthy server's first tokens slower than 25 ms (0.102 s seen once in CI).
    adaptive = backend.first_token.current()
    assert 0.1 <= adaptive < timeouts["first_token_s"]
    primary.configure(Faults(hang_before=1.0))
    async with asyncio.timeout(30):  # a guard: the limits under test are far shorter
        with pytest.raises(BackendTimeout) as caught:
            await collect(backend)
    # Both hangs failed. The first try had the adaptive limit, below the full one, so it can
    # only have ended in a FirstTokenTimeout; the retry ended in a plain BackendTimeout,
    # which only the full limit raises, and which a retry gets only after a FirstTokenTimeout.
    assert not isinstance(caught.value, FirstTokenTimeout)
    assert backend.counts.timed_out == 2 and primary.chat_requests == 12
    await backend.aclose()


@pytest.mark.parametrize(
    ("faults", "error", "gap_s"),
    [
        (Faults(cut=1.0, cut_at=2), BackendUnavailable, LOW_TIMEOUTS["gap_s"]),
        (Faults(hang_during=1.0), BackendTimeout, 0.5),  # the hang is given up at gap_s
    ],
)
async def test_a_reply_broken_after_text_is_not_retried(
    primary: FaultServer, faults: Faults, error: type[BackendError], gap_s: float
) -> None:
    primary.configure(faults)
    backend = resilient(primary, timeouts={**LOW_TIMEOUTS, "gap_s": gap_s})
    received: list[str] = []
    with pytest.raises(error):
        async with aclosing(backend.stream(ask())) as chunks:
            async for chunk in chunks:
                received.append(chunk.text)
    assert received and primary.sent[0].startswith("".join(received))
    assert primary.chat_requests == 1  # text was shown: never sent again
    await backend.aclose()


async def test_a_hang_never_holds_the_caller_past_total_s(primary: FaultServer) -> None:
    primary.configure(Faults(hang_before=1.0))
    timeouts = {"first_token_s": 60, "gap_s": 60, "total_s": 0.3}
    backend = resilient(primary, timeouts=timeouts)
    async with asyncio.timeout(5):  # a guard: the limit under test is total_s
        with pytest.raises(BackendTimeout, match="whole reply"):
            await collect(backend)
    await backend.aclose()


async def test_context_length_error_is_neither_retried_nor_failed_over(
    primary: FaultServer, backup: FaultServer
) -> None:
    primary.configure(Faults(context=1.0))
    chain = FallbackChain([resilient(primary), resilient(backup)])
    await chain.start()
    with pytest.raises(ContextTooLong):
        await collect(chain)
    assert primary.chat_requests == 1 and backup.chat_requests == 0
    await chain.aclose()


async def test_malformed_stream_falls_back_with_one_notice(
    primary: FaultServer, backup: FaultServer
) -> None:
    primary.configure(Faults(malformed=1.0))
    chain = FallbackChain([resilient(primary), resilient(backup)])
    await chain.start()
    chunks = await collect(chain)
    notices = [c.notice for c in chunks if c.notice]
    assert len(notices) == 1 and "fallback backup" in notices[0]
    assert chunks[0].notice  # before any text
    assert text_of(chunks) == backup.sent[0]
    await chain.aclose()


async def test_breaker_opens_fallback_answers_then_closes_after_good_probe(
    primary: FaultServer, backup: FaultServer
) -> None:
    clock = FakeClock()
    breaker = {"failure_threshold": 3, "open_s": 30}
    first = resilient(primary, clock, breaker=breaker, retry={**FAST_RETRY, "attempts": 1})
    chain = FallbackChain([first, resilient(backup)])
    await chain.start()
    primary.configure(Faults(unavailable=1.0))
    for _ in range(3):
        await collect(chain)
    assert state(first.breaker) is BreakerState.OPEN and primary.chat_requests == 3
    chunks = await collect(chain)  # open: the primary is not even asked
    assert primary.chat_requests == 3 and backup.chat_requests == 4
    assert any(c.notice for c in chunks)
    primary.configure(Faults())  # the server recovers; the breaker notices only after open_s
    clock.now += 30
    chunks = await collect(chain)  # the probe
    assert text_of(chunks).startswith("primary-4:") and not any(c.notice for c in chunks)
    clock.now += BreakerSettings().ramp_s  # closed once the ramp is through
    assert state(first.breaker) is BreakerState.CLOSED
    await chain.aclose()


async def test_all_backends_down_raises_unavailable(
    primary: FaultServer, backup: FaultServer
) -> None:
    primary.configure(Faults(unavailable=1.0))
    backup.configure(Faults(unavailable=1.0))
    chain = FallbackChain([resilient(primary), resilient(backup)])
    await chain.start()
    with pytest.raises(BackendUnavailable):
        await collect(chain)
    assert await chain.count_tokens(["one two three"]) == [3]  # /tokenize still answers
    await chain.aclose()


async def test_a_misconfigured_member_leaves_the_rest_of_the_chain_answering(
    primary: FaultServer, backup: FaultServer, tmp_path: Path
) -> None:
    """A member that cannot start for its configuration (a missing extra, a tokenizer folder
    that holds none: ConfigError, exit status 2 alone) ended the whole chain's start once
    ConfigError was no BackendError (a helper's review). It is one of the members that cannot
    start; the chain fails, as a configuration problem, only when every member is one."""
    broken = {"tokenizer": str(tmp_path)}  # no tokenizer in it
    chain = FallbackChain([resilient(primary, **broken), resilient(backup)])
    await chain.start()
    chunks = await collect(chain)
    assert text_of(chunks).startswith("backup-1:") and primary.chat_requests == 0
    await chain.aclose()
    both = FallbackChain([resilient(primary, **broken), resilient(backup, **broken)])
    with pytest.raises(ConfigError, match=r"no backend could start: .*backend\.tokenizer"):
        await both.start()
    await both.aclose()
