"""Hostile input through the conversation core, found by a trial as an attacker."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

from backends.base import Chunk, GenerationRequest, Usage
from bot.app import Parley
from bot.conversation.manager import STOPPED_NOTE
from bot.settings import Settings
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend

GROUP = ConversationKey("test", "group-1")
ADA = User("test", "u1", "Ada")
BOB = User("test", "u2", "Bob")
_ids = itertools.count()


def said(text: str, user: User, *, key: ConversationKey = GROUP, group: bool = True) -> Incoming:
    return Incoming(key, user, text, idempotency_key=f"abuse{next(_ids)}", group=group)


class GatedBackend(ScriptedBackend):
    """Streams its answer's first word, then waits for `gate` before the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        yield Chunk(text="first")
        await self.gate.wait()
        yield Chunk(text=" and the rest")
        yield Chunk(usage=Usage(0, 4), finish_reason="stop")


class FirstChunkSink(CollectingSink):
    def __init__(self) -> None:
        super().__init__()
        self.first_chunk = asyncio.Event()

    async def deliver(
        self, key: ConversationKey, chunks: AsyncIterator[str], *, reply_to: str = ""
    ) -> None:
        async def watched() -> AsyncIterator[str]:
            async for chunk in chunks:
                self.first_chunk.set()
                yield chunk

        await super().deliver(key, watched(), reply_to=reply_to)


def settings_for(tmp_path: Path) -> Settings:
    return Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"})  # type: ignore[arg-type]


async def test_a_members_stop_in_a_group_leaves_another_members_answer_alone(
    tmp_path: Path,
) -> None:
    """Bob's /stop in a group cut the answer Ada was being given (and aborted its request):
    any member could silence the bot's answers to everyone else, as /reset could before it
    was made the admins'. Now /stop stops the answer to the sender's own message only."""
    backend = GatedBackend()
    async with Parley(settings_for(tmp_path), backend=backend) as app:
        sink = FirstChunkSink()
        app.manager.attach("test", sink)
        asked = await app.manager.submit(said("tell me a long story", ADA))
        await sink.first_chunk.wait()
        await app.manager.submit(said("/stop", BOB))
        backend.gate.set()
        await app.manager.wait_idle(asked.conversation_id)
        answer, _ = sink.replies[GROUP]
        assert answer == "first and the rest"
        assert not answer.endswith(STOPPED_NOTE)

        # Her own /stop still stops it.
        backend.gate = asyncio.Event()
        sink.first_chunk = asyncio.Event()
        await app.manager.submit(said("another story, please", ADA))
        await sink.first_chunk.wait()
        await app.manager.submit(said("/stop", ADA))
        await app.manager.wait_idle(asked.conversation_id)
        history = await app.store.history(asked.conversation_id, 10)
    stopped = [m.content for m in history if m.role is Role.ASSISTANT][2]
    assert stopped == "first" + STOPPED_NOTE
    assert sink.replies[GROUP][2] == stopped
