"""`log_format = "json"`: one object per line, with the conversation, platform and turn on
the lines of a turn, and bot.logsafety's redaction still applied."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import Chunk, GenerationRequest
from bot import logformat, logsafety
from bot.app import Parley
from bot.errors import BackendUnavailable
from bot.settings import Settings
from bot.types import ConversationKey, Incoming, User
from tests.doubles import CollectingSink, ScriptedBackend

KEY = ConversationKey("test", "chat-9")
SECRET = "hunter2-api-key"


class RefusingBackend(ScriptedBackend):
    """Every request fails with an error whose text carries a secret (as a URL might)."""

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        raise BackendUnavailable(f"http://bot:{SECRET}@model/v1 refused")
        yield Chunk()  # an async generator, like every backend's stream()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines to a buffer, through the safety filter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    logsafety.install([SECRET], handlers=[handler])
    logformat.use_json([handler])
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def parsed(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_lines_of_a_turn_carry_conversation_platform_and_turn(
    tmp_path: Path, json_lines: io.StringIO
) -> None:
    settings = Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"})  # type: ignore[arg-type]
    async with Parley(settings, backend=RefusingBackend()) as app:
        app.manager.attach("test", CollectingSink())
        logging.getLogger("test").info("before any turn")
        recorded = await app.manager.handle(
            Incoming(KEY, User("test", "u1"), "a private question", idempotency_key="j1")
        )

    lines = parsed(json_lines)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    outside = next(line for line in lines if line["message"] == "before any turn")
    assert "conversation" not in outside and "turn" not in outside
    failed = [line for line in lines if "backend failed" in line["message"]]
    assert failed, lines
    for line in failed:
        assert line["level"] == "WARNING"
        assert line["logger"] == "bot.conversation.manager"
        assert line["conversation"] == "test:chat-9"
        assert line["platform"] == "test"
        assert line["turn"] == recorded.message_id
    text = json_lines.getvalue()
    assert SECRET not in text and logsafety.REDACTED in text
    assert "a private question" not in text


def test_exceptions_are_one_line_of_json_and_redacted(json_lines: io.StringIO) -> None:
    try:
        raise RuntimeError(f"token {SECRET}")
    except RuntimeError:
        logging.getLogger("test").exception("it failed")
    (line,) = parsed(json_lines)
    assert line["message"] == "it failed"
    assert "RuntimeError: token ***" in line["exception"]
    assert line["time"].endswith("Z")
