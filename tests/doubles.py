"""Test doubles for the two seams of the core: the backend and the reply sink."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from backends.base import Capabilities, Chunk, GenerationRequest, Usage, estimate_tokens
from bot.errors import ContextTooLong
from bot.types import ChatMessage, ConversationKey, Role


class ScriptedBackend:
    """Answers each request with `answer(request)`, streamed word by word.

    `delay` returns seconds to wait before each chunk (random delays shake out ordering bugs).
    `finish_reason` ends each answer ("length": as if the token limit cut it).
    Every request it saw is kept in `requests`.
    """

    def __init__(
        self,
        answer: Callable[[GenerationRequest], str] | None = None,
        *,
        delay: Callable[[], float] | None = None,
        max_model_len: int = 4096,
        finish_reason: str = "stop",
    ) -> None:
        self._answer = answer or echo_last_user
        self._finish_reason = finish_reason
        self._delay = delay
        self.requests: list[GenerationRequest] = []
        self.closed_early = 0
        self._caps = Capabilities("scripted", "scripted", max_model_len, exact_token_counts=False)

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [estimate_tokens(t) for t in texts]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(estimate_tokens(m.content) + 4 for m in messages)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        text = self._answer(request)
        words = text.split(" ")
        finished = False
        try:
            for i, word in enumerate(words):
                if self._delay is not None:
                    await asyncio.sleep(self._delay())
                yield Chunk(text=word if i == 0 else " " + word)
            finished = True
            yield Chunk(usage=Usage(0, estimate_tokens(text)), finish_reason=self._finish_reason)
        finally:
            if not finished:
                self.closed_early += 1

    async def aclose(self) -> None:
        return None


class ContextBoundBackend(ScriptedBackend):
    """Refuses, as vLLM does, a request whose prompt and max_tokens exceed the model's
    context (vLLM's 400, which the backends raise as ContextTooLong)."""

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        prompt = sum(estimate_tokens(m.content) + 4 for m in request.messages)
        if prompt + request.max_tokens > self.capabilities.max_model_len:
            raise ContextTooLong("the prompt is longer than the model's context")
        async for chunk in super().stream(request):
            yield chunk


def echo_last_user(request: GenerationRequest) -> str:
    last = [m for m in request.messages if m.role is Role.USER][-1]
    return f"echo: {last.content}"


def random_delay(max_s: float, seed: int = 7) -> Callable[[], float]:
    rng = random.Random(seed)
    return lambda: rng.random() * max_s


class CollectingSink:
    """Keeps every delivered reply per conversation, and how many chunks each came in."""

    def __init__(self) -> None:
        self.replies: dict[ConversationKey, list[str]] = defaultdict(list)
        self.reply_to: dict[ConversationKey, list[str]] = defaultdict(list)
        self.chunks: list[int] = []

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        parts = [chunk async for chunk in chunks]
        self.reply_to[key].append(reply_to)
        self.chunks.append(len(parts))
        self.replies[key].append("".join(parts))


class AnyDesk:
    """A help desk that reaches every conversation and takes whatever it is handed."""

    platforms: frozenset[str] | None = None

    async def publish(self, event: object) -> None:
        return None
