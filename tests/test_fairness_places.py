"""A conversation that keeps getting messages against the others waiting for a place (prefix
fairness), on SQLite and PostgreSQL. The test failed before its fix."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from backends.base import Chunk, GenerationRequest
from bot.types import ConversationKey
from tests.test_backlog import HeldBackend, message
from tests.test_turn_slots import worker

BUSY = ConversationKey("test", "busy-group")
QUIET = ConversationKey("test", "quiet-chat")


class InOrder(HeldBackend):
    """HeldBackend that keeps whose requests it got, in order."""

    def __init__(self) -> None:
        super().__init__(free=set())
        self.asked: list[str] = []

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.asked.append(request.session_id)
        async for chunk in super().stream(request):
            yield chunk


async def test_a_busy_conversation_gives_its_place_to_one_that_waits(database_url: str) -> None:
    """A conversation whose messages keep coming (a busy group, a flooder under the rate
    limit) ran turn after turn in its place for as long as they came: with every place taken
    so, a message to any other conversation waited for the flood to end. Now a conversation
    with another message when its turn ends goes behind those that wait, so each waits for
    one turn of the busy ones, not for all of them."""
    backend = InOrder()
    async with worker(database_url, backend, max_turns=1) as (app, sink):
        try:
            await app.manager.submit(message(BUSY, "one", "busy-1"))
            await backend.holding(1)
            await app.manager.submit(message(BUSY, "two", "busy-2"))  # during its turn
            await app.manager.submit(message(QUIET, "hello", "quiet-1"))
            backend.release.set()
            await app.manager.wait_idle()
        finally:
            backend.release.set()
    assert backend.asked == [str(BUSY), str(QUIET), str(BUSY)]
    assert sink.replies[BUSY] == ["echo: one", "echo: two"]
    assert sink.replies[QUIET] == ["echo: hello"]
