"""Issue 11's flaky server and a hard outage, through the real OpenAI-compatible backend against
tests/fault_server.py, with the default retry, budget and breaker settings.

Flaky: 30% 503, 10% 429 (Retry-After), 5% hangs that never end; 80 conversations of 8
questions run concurrently, each question a `stream()` of the stack `build_resilient_backend`
makes. Only the time limits are scaled to a test (the adaptive first-token floor is 1 s
instead of 5 s), so a hang costs about a second. A stall of the event loop longer than that
floor makes every request in flight time out at once, a burst of failures that opens the
breaker (seen once in CI with a floor of 0.5 s: `openings == 1`, 147 requests refused). So
the floor is 1 s, and the test's process freezes its heap for the run, as `parley run` does
after start: a full garbage collection over a test process that has loaded models can be
such a stall. `python -m bench.flaky_backend` runs the same scenario through `Parley` with
every default, and prints the figures.

Outage: the breaker's clock is a fake one, moved by the test; the server answers 503 to all,
then recovers.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import aclosing

import pytest

from backends.base import GenerationRequest
from backends.breaker import BreakerState, CircuitBreaker
from backends.factory import build_resilient_backend
from backends.openai_compat import OpenAICompatBackend
from backends.resilience import ResilientBackend
from bot.errors import BackendError
from bot.settings import BackendSettings, BreakerSettings
from bot.types import ChatMessage, Role
from tests.fault_server import MODEL, Faults, FaultServer, fault_server

CONVERSATIONS = 80
QUESTIONS = 8
FLAKY = Faults(
    unavailable=0.30, throttled=0.10, hang_before=0.05, retry_after_s=0.05, hang_s=600, seed=11
)
TEST_TIMEOUTS = {"connect_s": 1, "first_token_s": 3, "first_token_min_s": 1.0, "total_s": 30}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not keep an old narrowing across actions


@pytest.fixture
def primary() -> Iterator[FaultServer]:
    with fault_server("primary") as server:
        yield server


def settings_for(server: FaultServer, **extra: object) -> BackendSettings:
    values = {"kind": "openai", "base_url": server.base_url, "model": MODEL, "max_tokens": 6}
    return BackendSettings.model_validate({**values, "timeouts": TEST_TIMEOUTS, **extra})


async def answered_by(backend: ResilientBackend, server: FaultServer) -> bool:
    """One question: True when the reply is one the server sent, False on an error."""
    request = GenerationRequest([ChatMessage(Role.USER, "a question")], max_tokens=6)
    try:
        async with aclosing(backend.stream(request)) as chunks:
            text = "".join([chunk.text async for chunk in chunks])
    except BackendError:
        return False
    return text in server.sent


async def test_a_flaky_server_answers_90_percent_at_under_two_requests_each(
    primary: FaultServer,
) -> None:
    primary.configure(FLAKY)
    backend = build_resilient_backend(settings_for(primary))
    assert isinstance(backend, ResilientBackend)
    await backend.start()

    async def conversation() -> int:
        return sum([await answered_by(backend, primary) for _ in range(QUESTIONS)])

    gc.collect()
    gc.freeze()  # no collection over the test process's whole heap in the middle of the run
    try:
        async with asyncio.timeout(120):  # a guard: the run takes seconds
            answered = sum(await asyncio.gather(*(conversation() for _ in range(CONVERSATIONS))))
    finally:
        gc.unfreeze()
    await backend.aclose()
    questions = CONVERSATIONS * QUESTIONS
    print(
        f"\nanswered={answered}/{questions} requests={primary.chat_requests} "
        f"per_answer={primary.chat_requests / max(1, answered):.2f} {backend.counts} "
        f"openings={backend.breaker.openings} faults={dict(primary.faults_drawn)}"
    )
    assert answered >= 0.9 * questions
    assert primary.chat_requests <= 2 * answered
    assert backend.breaker.openings == 0  # random failures are not an outage
    assert primary.faults_drawn["hang_before"] > 0  # the hangs were there, and given up


async def test_a_hard_outage_opens_once_and_recovery_closes_through_gradual_probes(
    primary: FaultServer,
) -> None:
    clock = FakeClock()
    fast_retry = {"base_delay_s": 0.001, "max_delay_s": 0.005}
    settings = settings_for(primary, retry=fast_retry)
    backend = ResilientBackend(OpenAICompatBackend(settings), settings, name="p", clock=clock)
    breaker, defaults = backend.breaker, BreakerSettings()

    async def ask(times: int) -> int:
        return sum([await answered_by(backend, primary) for _ in range(times)])

    primary.configure(Faults(unavailable=1.0))
    while state(breaker) is BreakerState.CLOSED:
        assert await ask(1) == 0
    assert primary.chat_requests <= defaults.min_requests  # opened fast
    for _ in range(3):  # still down: each half-open spell's probes fail, and it opens again
        clock.now += defaults.open_s
        for _ in range(100):
            await ask(1)
            if state(breaker) is BreakerState.OPEN:
                break
        assert state(breaker) is BreakerState.OPEN
    down_requests = primary.chat_requests
    assert down_requests <= defaults.min_requests + 3 * defaults.probes_judged

    primary.configure(Faults())  # recovered
    clock.now += defaults.open_s
    shares = []
    for _ in range(4):  # 20 questions at 0, 2.5, 5 and 7.5 s into the ramp
        shares.append(await ask(20))
        clock.now += defaults.ramp_s / 4
    print(f"\nquestions answered of 20 at 0, 2.5, 5 and 7.5 s into the ramp: {shares}")
    assert shares == sorted(shares) and shares[0] <= 4 and 12 <= shares[-1] < 20
    assert state(breaker) is BreakerState.CLOSED and await ask(20) == 20
    assert breaker.openings == 1  # one outage, one opening
    await backend.aclose()
