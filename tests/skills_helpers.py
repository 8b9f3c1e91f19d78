"""Shared set-up of the skills tests: an app on SQLite with a collecting sink, a small
knowledge base, and a scripted backend that reports which skill a request came from."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from backends.base import Capabilities, GenerationRequest
from bot.app import Parley
from bot.settings import Settings
from bot.types import ConversationKey, Incoming, Role, User
from tests.doubles import CollectingSink, ScriptedBackend

KEY = ConversationKey("test", "chat-1")
ADA = User("test", "u1", "Ada")
BOB = User("test", "u2", "Bob")
_ids = itertools.count()

REDIS_DOC = """# Redis

Parley keeps context windows, locks and rate limits in Redis when it is configured.

## Locks

A conversation lock lives for thirty seconds without renewal; the worker renews it while a
turn runs, so a crashed worker frees the conversation quickly.
"""
TELEGRAM_DOC = """# Telegram

## Webhooks

In webhook mode Telegram posts updates to the public HTTPS address behind your balancer.
"""


def incoming(
    text: str, *, user: User = ADA, key: ConversationKey = KEY, reply_to: str | None = None
) -> Incoming:
    return Incoming(key, user, text, idempotency_key=f"s{next(_ids)}", reply_to_text=reply_to)


def settings_for(tmp_path: Path, **skills: Any) -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},  # type: ignore[arg-type]
        skills=skills,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(
    settings: Settings, backend: object | None = None, *, kb_docs: bool = False
) -> AsyncIterator[tuple[Parley, CollectingSink]]:
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        sink = CollectingSink()
        app.manager.attach("test", sink)
        if kb_docs:
            folder = Path(settings.database.url.get_secret_value().split("///")[1]).parent
            (folder / "redis.md").write_text(REDIS_DOC)
            (folder / "telegram.md").write_text(TELEGRAM_DOC)
            await app.kb.add([folder / "redis.md", folder / "telegram.md"])
        yield app, sink


def system_of(request: GenerationRequest) -> str:
    return next(m.content for m in request.messages if m.role is Role.SYSTEM)


def user_of(request: GenerationRequest) -> str:
    return [m.content for m in request.messages if m.role is Role.USER][-1]


def shout(request: GenerationRequest) -> str:
    """A "translation": every word upper-cased, everything else (placeholders) kept."""
    return re.sub(r"[^\W\d_]+", lambda m: m.group(0).upper(), user_of(request))


class StructuredBackend(ScriptedBackend):
    """Claims vLLM's structured output: answers a schema request with `choice` as JSON."""

    def __init__(self, choice: str, answer: Any = None, **options: Any) -> None:
        super().__init__(answer, **options)
        self._choice = choice
        self._caps = Capabilities("vllm", "scripted", 4096, exact_token_counts=False)

    async def stream(self, request: GenerationRequest) -> Any:
        if request.json_schema is not None:
            self.requests.append(request)
            from backends.base import Chunk

            yield Chunk(text=self._choice)
            return
        async for chunk in super().stream(request):
            yield chunk
