"""The adapter contract: one suite, every adapter (tests/adapter_harness.py). What the core
decides (who may talk, who may change a group's settings, how often a refusal is said) holds
the same on every platform; what the platform renders (a stopped answer, a long answer with
code) reaches the reader whole, within the platform's limits, equal to what was recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path

import pytest

from backends.base import Capabilities, Chunk, GenerationRequest
from bot import phrases
from bot.types import ChatMessage, Role
from tests.adapter_harness import HARNESSES, Harness, visible

pytestmark = pytest.mark.parametrize("adapter", sorted(HARNESSES))


class HangingBackend:
    """Streams `first`, then waits until the request is cancelled (/stop)."""

    capabilities = Capabilities("hanging", "hanging", 4096, exact_token_counts=False)

    def __init__(self, first: str = "The answer begins") -> None:
        self.first = first
        self.started = asyncio.Event()
        self.cancelled = 0

    async def start(self) -> None:
        return None

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t) // 4 + 1 for t in texts]

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content) // 4 + 5 for m in messages)

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        yield Chunk(text=self.first)
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield Chunk(text="never")  # pragma: no cover

    async def aclose(self) -> None:
        return None


class FixedBackend(HangingBackend):
    def __init__(self, answer: Callable[[], str]) -> None:
        super().__init__()
        self._answer = answer

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        text = self._answer()
        for start in range(0, len(text), 500):  # streamed in pieces, like a model
            yield Chunk(text=text[start : start + 500])


async def _recorded_answers(harness: Harness) -> list[str]:
    rows = await harness.app.store.history(1, 100)
    return [row.content for row in rows if row.role is Role.ASSISTANT]


async def test_a_sender_not_allowed_hears_it_once_and_nothing_is_kept(
    adapter: str, tmp_path: Path
) -> None:
    async with HARNESSES[adapter](tmp_path, None, access={"allowed_users": ["4242"]}) as h:
        for text in ("hello", "are you there?", "/help"):
            await h.send(text)
        await h.idle()
        seen = "\n".join(h.seen())
        assert seen.count(phrases.NOT_ALLOWED) == 1
        assert "/reset" not in seen  # /help was not answered
        assert await h.app.store.conversations_with_pending() == []
        assert await h.app.store.history(1, 10) == []


async def test_changing_what_a_group_gets_is_for_its_admins(adapter: str, tmp_path: Path) -> None:
    async with HARNESSES[adapter](tmp_path, None) as h:
        if not h.groups:  # one person, who runs the bot: the operator may change anything
            await h.send("/keep on")
            await h.idle()
            assert phrases.ADMINS_ONLY not in "\n".join(h.seen())
            return
        await h.send("/keep on", group=True)
        await h.send("/keep", group=True)  # asking for the state is for everyone
        await h.idle()
        seen = h.seen(group=True)  # the refusal is a notice, not a turn: order may vary
        assert sorted(seen, key=lambda text: text != phrases.ADMINS_ONLY)[0] == phrases.ADMINS_ONLY
        assert len(seen) == 2 and "/keep on" in "\n".join(seen)
        await h.send("/keep on", group=True, admin=True)
        await h.idle()
        seen = h.seen(group=True)
        assert len(seen) == 3 and seen.count(phrases.ADMINS_ONLY) == 1


@pytest.mark.parametrize(
    "question", ["tell me everything", "/summarize " + "The crane moved the tea. " * 40]
)
async def test_stop_ends_a_streamed_answer_and_keeps_what_was_shown(
    adapter: str, tmp_path: Path, question: str
) -> None:
    backend = HangingBackend()
    async with HARNESSES[adapter](tmp_path, backend) as h:
        await h.send(question)
        async with asyncio.timeout(30):
            await backend.started.wait()
        await h.send("/stop")
        await h.idle()
        assert backend.cancelled == 1
        answers = await _recorded_answers(h)
        stopped = answers[0]
        assert stopped.startswith("The answer begins") and phrases.STOPPED in stopped
        assert visible(stopped) in visible("\n".join(h.seen()))


def _long_answer() -> str:
    parts = []
    for n in range(45):
        parts.append(f"Step {n}: the **answer** goes on, and on, with a sentence that ends here.")
        code = "\n".join(f"    value_{n}_{i} = compute({n}, {i})  # line {i}" for i in range(6))
        parts.append(f"```python\n{code}\n```")
        parts.append("A paragraph after the code, long enough to matter. " * 3)
    return "\n\n".join(parts)


async def test_a_long_answer_is_split_within_the_limit_with_code_intact(
    adapter: str, tmp_path: Path
) -> None:
    answer = _long_answer()
    assert len(answer) > 20_000
    async with HARNESSES[adapter](tmp_path, FixedBackend(lambda: answer)) as h:
        await h.send("explain it all")
        await h.idle()
        seen = h.seen()
        assert all(0 < h.length(message) <= h.limit for message in seen)
        code_lines = [line.strip() for line in answer.splitlines() if "compute(" in line]
        for line in code_lines:  # no code line is cut between two messages
            assert any(line in message for message in seen), line
        (recorded,) = await _recorded_answers(h)
        assert recorded == answer
        assert visible("".join(seen)) == visible(answer)
