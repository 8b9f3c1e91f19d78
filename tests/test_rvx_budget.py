"""Token budgets against a user who tries to spend without being counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bot.budget import BudgetExhausted, Budgets, MeteredBackend, prompt_estimate
from bot.budget_counters import Decision, RedisCounter
from bot.settings import BudgetSettings
from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.usage import Subject, UsageLog
from bot.types import ChatMessage, ConversationKey, Role

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY = ConversationKey("test", "chat-1")
ADA = Subject("user", "test:ada")
LONG_PROMPT = [ChatMessage(Role.USER, "tell me everything " * 2000)]


class PrefillingBackend:
    """A model server that has the request and is still reading the prompt (no token out
    yet), or that streams a reply without reporting usage, as some servers do."""

    def __init__(self, *, hang: bool) -> None:
        self.hang = hang
        self.prefilling = asyncio.Event()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities("prefill", "prefill", 65536, exact_token_counts=False)

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return prompt_estimate(messages)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.prefilling.set()
        if self.hang:
            await asyncio.Event().wait()  # until the consumer gives up
        yield Chunk(finish_reason="stop")  # an empty reply, and no usage

    async def aclose(self) -> None:
        return None


async def _say(_phrase: str, **_kw: Any) -> str:
    return "used up"


@pytest.fixture
async def budgets(tmp_path: Path) -> AsyncIterator[Budgets]:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    settings = BudgetSettings(user_daily_tokens=1_000_000, usage_flush_s=0)
    budgets = Budgets(settings, UsageLog(engine, flush_s=0), clock=lambda: NOON)
    yield budgets
    await budgets.aclose()
    await engine.dispose()


async def _consume(
    backend: MeteredBackend, messages: Sequence[ChatMessage] = LONG_PROMPT, max_tokens: int = 64
) -> None:
    async for _ in backend.stream(GenerationRequest(messages, max_tokens=max_tokens)):
        pass


async def test_a_turn_stopped_before_the_first_token_counts_its_prompt(budgets: Budgets) -> None:
    """/stop (or a client that leaves) while the server reads a long prompt: the server did
    the work, so the prompt is counted; else a user could send long prompts and stop each
    one at once, for ever, without spending any of the budget."""
    inner = PrefillingBackend(hang=True)
    async with budgets.turn(KEY, "ada", _say):
        consumer = asyncio.create_task(_consume(MeteredBackend(inner)))
        await inner.prefilling.wait()
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
    spent = await budgets.usage.tokens(NOON.date(), ADA)
    assert spent == prompt_estimate(LONG_PROMPT)


async def test_an_empty_reply_without_usage_counts_its_prompt(budgets: Budgets) -> None:
    """A server that reports no usage: the estimate stands in for it, for an empty reply too
    (the server read the prompt all the same)."""
    async with budgets.turn(KEY, "ada", _say):
        await _consume(MeteredBackend(PrefillingBackend(hang=False)))
    spent = await budgets.usage.tokens(NOON.date(), ADA)
    assert spent == prompt_estimate(LONG_PROMPT)


class FlakyRedisCounter(RedisCounter):
    """The shared counter, over a real Redis, that fails as an unreachable one while `down`
    (or only its settlements, while `settle_down`)."""

    down = False
    settle_down = False

    async def reserve(self, *args: Any, **kwargs: Any) -> Decision:
        if self.down:
            raise RedisConnectionError("unreachable")
        return await super().reserve(*args, **kwargs)

    async def settle(self, *args: Any, **kwargs: Any) -> None:
        if self.down or self.settle_down:
            raise RedisConnectionError("unreachable")
        await super().settle(*args, **kwargs)


class ReportingBackend(PrefillingBackend):
    """Answers at once and reports `TURN_TOKENS` tokens of usage."""

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        yield Chunk(text="ok", usage=Usage(TURN_TOKENS - 10, 10), finish_reason="stop")


TURN_TOKENS = 300


@pytest.fixture
async def shared_budgets(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> AsyncIterator[tuple[Budgets, FlakyRedisCounter]]:
    """Budgets of four turns a day, shared through a real Redis that the test can cut off."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    client = Redis.from_url(redis_url)
    usage = UsageLog(engine, flush_s=0)
    shared = FlakyRedisCounter(client, usage, key_prefix=key_prefix)
    settings = BudgetSettings(user_daily_tokens=4 * TURN_TOKENS, usage_flush_s=0)
    budgets = Budgets(settings, usage, shared, clock=lambda: NOON, retry_after_failure_s=0)
    yield budgets, shared
    await budgets.aclose()
    await client.aclose()
    await engine.dispose()


async def _turn(budgets: Budgets) -> bool:
    """One turn of Ada's that asks the model once: True when it was answered."""
    backend = MeteredBackend(ReportingBackend(hang=False))
    try:
        async with budgets.turn(KEY, "ada", _say):
            await _consume(backend, [ChatMessage(Role.USER, "hi")], max_tokens=8)
    except BudgetExhausted:
        return False
    return True


async def test_usage_counted_while_redis_was_away_still_counts_once_it_is_back(
    shared_budgets: tuple[Budgets, FlakyRedisCounter],
) -> None:
    """Redis unreachable for a while (a network cut, not a restart: it keeps its counters):
    the turns counted in this process meanwhile must not be forgotten when it is back, or the
    user gets the budget's remainder a second time."""
    budgets, shared = shared_budgets
    answered = [await _turn(budgets)]  # counted in Redis
    shared.down = True
    answered += [await _turn(budgets), await _turn(budgets)]  # counted here, from SQL on
    shared.down = False
    answered += [await _turn(budgets), await _turn(budgets), await _turn(budgets)]
    assert answered == [True, True, True, True, False, False]


async def test_a_turn_whose_settlement_missed_redis_still_counts(
    shared_budgets: tuple[Budgets, FlakyRedisCounter],
) -> None:
    """Redis gone for just the moment a turn settles: its reservation lapses, and its tokens
    must reach the shared count all the same (from SQL, which has them)."""
    budgets, shared = shared_budgets
    answered = [await _turn(budgets)]
    shared.settle_down = True
    answered.append(await _turn(budgets))
    shared.settle_down = False
    answered += [await _turn(budgets) for _ in range(4)]
    assert answered == [True, True, True, True, False, False]
