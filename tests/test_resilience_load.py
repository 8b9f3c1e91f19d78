"""500 turns through Parley's real pipeline against a faulty server, with a fallback.

Setup: the primary is a fault_server with 30% 503, 10% 429 (Retry-After 0.05 s) and 5% hangs
before the stream (first_token_s is 0.5 s here); a second, fault-free fault_server is the
configured fallback. 25 conversations of 20 turns run concurrently through `Parley` with the
backend `build_resilient_backend` makes from the settings, and a collecting sink is the
consumer. The retry and breaker settings are the defaults. Checks: at least 99% of turns
answered, at least 90% by the faulty primary itself (the fallback is for outages, not for a
server that still answers more than half its requests); the primary saw at most 2x the base
number of requests (those Parley made of it: at least one per turn, more where skills such
as intent detection ask too), the retry budget's bound; every text a consumer received is
exactly one reply a server sent, each at most once: nothing was sent twice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.factory import build_resilient_backend
from backends.fallback import FallbackChain
from bot.app import Parley
from bot.phrases import TRUNCATED
from bot.settings import Settings
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink
from tests.fault_server import MODEL, Faults, FaultServer, fault_server

CONVERSATIONS = 25
TURNS = 20
FAULTS = Faults(unavailable=0.30, throttled=0.10, hang_before=0.05, retry_after_s=0.05, seed=42)


@pytest.fixture
def servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    with fault_server("primary", FAULTS) as primary, fault_server("backup") as backup:
        yield primary, backup


def settings_for(tmp_path: Path, primary: FaultServer, backup: FaultServer) -> Settings:
    backend = {
        "kind": "openai",
        "base_url": primary.base_url,
        "model": MODEL,
        "max_tokens": 8,
        "timeouts": {"connect_s": 1, "first_token_s": 0.5, "gap_s": 0.5, "total_s": 5},
        "retry": {"base_delay_s": 0.02, "max_delay_s": 0.2, "max_retry_after_s": 0.5},
        "fallbacks": [
            {"kind": "openai", "base_url": backup.base_url, "model": MODEL, "label": "backup"}
        ],
    }
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},  # type: ignore[arg-type]
        backend=backend,  # type: ignore[arg-type]
        # Each conversation's turns come within seconds: no per-user limit in a backend test.
        conversation={"rate_limit_messages": 0},  # type: ignore[arg-type]
    )


async def converse(app: Parley, key: ConversationKey, ids: Iterator[int]) -> None:
    user = User(key.platform, "u", "Ada")
    for turn in range(TURNS):
        await app.manager.handle(Incoming(key, user, f"question {turn}", f"m{next(ids)}"))


async def test_500_turns_under_faults(
    tmp_path: Path, servers: tuple[FaultServer, FaultServer]
) -> None:
    primary, backup = servers
    settings = settings_for(tmp_path, primary, backup)
    backend = build_resilient_backend(settings.backend)
    assert isinstance(backend, FallbackChain)
    first = backend.backends[0]
    sink = CollectingSink()
    keys = [ConversationKey("load", f"chat-{n}") for n in range(CONVERSATIONS)]
    async with Parley(settings, backend=backend) as app:
        app.manager.attach("load", sink)
        ids = itertools.count()
        async with asyncio.timeout(120):
            await asyncio.gather(*(converse(app, key, ids) for key in keys))

    replies = [text for key in keys for text in sink.replies[key]]
    sent = primary.sent + backup.sent
    answered = [model_text(r) for r in replies if model_text(r) in sent]
    # The fallback's answers, and only those, carry the core's notice.
    assert all(("fallback" in r) == r.startswith("backup-") for r in replies if r[0] != "T")
    turns = CONVERSATIONS * TURNS
    # The base: requests Parley made of the primary (a turn may make several: intent, chat).
    base = first.counts.requests
    print(
        f"\nturns={turns} answered={len(answered)} base={base} {first.counts} "
        f"primary_chat={primary.chat_requests} backup_chat={backup.chat_requests} "
        f"faults={dict(primary.faults_drawn)}"
    )
    assert len(replies) == turns
    assert len(answered) >= 0.99 * turns
    from_primary = [r for r in answered if r.startswith("primary-")]
    assert len(from_primary) >= 0.9 * turns
    assert base >= turns and primary.chat_requests <= 2 * base
    assert first.breaker.openings == 0  # random failures are not an outage
    assert len(set(answered)) == len(answered)  # no server reply reached a user twice
    # Every other reply is the core's one sentence, never a mix of texts.
    assert all(model_text(r) in sent or "not answering" in r for r in replies)


def model_text(reply: str) -> str:
    """The reply without the fallback notice the core appends, nor the ellipsis after an
    answer the token limit ended (max_tokens 8: the servers' every answer)."""
    return reply.split("\n\n(", 1)[0].removesuffix(TRUNCATED)
