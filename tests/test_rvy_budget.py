"""A daily token budget smaller than the prompt plus `max_tokens` (bot.budget): a short
answer, not a refusal of every turn with nothing spent."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bot.budget import BudgetExhausted, Budgets, MeteredBackend, prompt_estimate
from bot.settings import BudgetSettings
from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.usage import Subject, UsageLog
from bot.types import ChatMessage, ConversationKey, Role

NOON = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY = ConversationKey("test", "chat-1")
ADA = Subject("user", "test:ada")
PROMPT = [ChatMessage(Role.USER, "what does the budget leave for an answer?")]
BUDGET = 200


class RecordingBackend:
    """Records each request and spends all of its `max_tokens`, as a long answer does."""

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities("rec", "rec", 4096, exact_token_counts=False)

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return prompt_estimate(messages)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        yield Chunk(text="an answer")
        usage = Usage(prompt_estimate(request.messages), request.max_tokens)
        yield Chunk(usage=usage, finish_reason="length")

    async def aclose(self) -> None:
        return None


async def _say(_phrase: str, **_kw: Any) -> str:
    return "used up"


@pytest.fixture
async def budgets(tmp_path: Path) -> AsyncIterator[Budgets]:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    settings = BudgetSettings(user_daily_tokens=BUDGET, usage_flush_s=0)
    budgets = Budgets(settings, UsageLog(engine, flush_s=0), clock=lambda: NOON)
    yield budgets
    await budgets.aclose()
    await engine.dispose()


async def _turn(budgets: Budgets, inner: RecordingBackend, max_tokens: int) -> None:
    async with budgets.turn(KEY, "ada", _say):
        request = GenerationRequest(PROMPT, max_tokens=max_tokens, request_id="r-1")
        async for _ in MeteredBackend(inner).stream(request):
            pass


async def test_a_budget_below_max_tokens_answers_short_instead_of_refusing(
    budgets: Budgets,
) -> None:
    inner = RecordingBackend()
    await _turn(budgets, inner, max_tokens=512)  # refused before: 512 alone is over 200
    [sent] = inner.requests
    assert sent.max_tokens == BUDGET - prompt_estimate(PROMPT)
    assert (sent.messages, sent.request_id) == (PROMPT, "r-1")  # only max_tokens is cut
    assert await budgets.usage.tokens(NOON.date(), ADA) == BUDGET  # never past the budget
    with pytest.raises(BudgetExhausted):  # and nothing is left for another turn
        await _turn(budgets, inner, max_tokens=512)
    assert len(inner.requests) == 1


async def test_max_tokens_within_the_budget_is_left_as_asked(budgets: Budgets) -> None:
    inner = RecordingBackend()
    await _turn(budgets, inner, max_tokens=20)
    assert inner.requests[0].max_tokens == 20
