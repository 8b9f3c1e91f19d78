"""Console conversations answered by the real vLLM engine on the CPU, with the tiny model.

Once in-process (AsyncLLM inside Parley) and once through vLLM's own OpenAI-compatible server,
with a restart in between turns. The model's output is random text: these tests prove the path
(settings -> backend -> context -> streaming -> storage), not the words.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import text

from adapters.console import ConsoleAdapter, ConsoleSettings
from bot.app import Parley
from bot.settings import Settings
from tests.fixtures_vllm import SERVED_MODEL, require

pytestmark = pytest.mark.vllm


class Screen(io.StringIO):
    """A terminal that remembers how many writes a reply arrived in."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


async def _chat(settings: Settings, lines: str) -> Screen:
    screen = Screen()
    async with Parley(settings) as app:
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(), stdin=io.StringIO(lines), stdout=screen,
            interactive=False,
        )  # fmt: skip
        app.intake.register(console.platform, console, ConsoleSettings().access)
        await console.run()
    return screen


async def _rows(settings: Settings) -> list[tuple[str, str, int]]:
    async with Parley(settings) as app, app.store.engine.connect() as conn:
        result = await conn.execute(
            text("SELECT role, kind, token_count FROM messages ORDER BY id")
        )
        return [(r[0], r[1], r[2]) for r in result.all()]


def _settings(tmp_path: Path, backend: dict[str, object]) -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/e2e.db"},  # type: ignore[arg-type]
        backend={"max_tokens": 12, "temperature": 0.8, **backend},  # type: ignore[arg-type]
        conversation={"context_tokens": 600, "summary_tokens": 48},  # type: ignore[arg-type]
    )


async def test_console_conversation_with_the_engine_in_process(
    tiny_model_dir: Path, vllm_env: None, tmp_path: Path
) -> None:
    require("vllm")
    settings = _settings(
        tmp_path,
        {
            "kind": "vllm",
            "model": str(tiny_model_dir),
            "gpu_memory_utilization": 0.3,
            "enforce_eager": True,
            "max_model_len": 1024,
        },
    )
    lines = ["hello there", "tell me more", "and then?", "/history", "one more turn"]
    screen = await _chat(settings, "".join(f"{line}\n" for line in lines))
    replies = screen.getvalue()
    assert replies.count("\n") >= len(lines)
    assert screen.writes > 2 * len(lines)  # replies arrived as deltas, not whole
    assert "hello there" in replies  # /history answered from SQL
    rows = await _rows(
        settings.model_copy(
            update={"backend": settings.backend.model_copy(update={"kind": "none"})}
        )
    )
    chat_replies = [r for r in rows if r[0] == "assistant" and r[1] == "chat"]
    assert len(chat_replies) == 4
    assert all(tokens > 0 for _, _, tokens in chat_replies)


async def test_console_conversation_through_the_vllm_server_across_a_restart(
    vllm_server: str, tmp_path: Path
) -> None:
    settings = _settings(
        tmp_path, {"kind": "openai", "base_url": vllm_server, "model": SERVED_MODEL}
    )
    first = await _chat(settings, "hello there\ntell me more\n")
    second = await _chat(settings, "still there?\n/history\n")
    assert first.writes > 4 and second.writes > 2
    assert "tell me more" in second.getvalue()  # the history survived the restart
    rows = await _rows(settings)
    roles = [role for role, kind, _ in rows if kind == "chat"]
    assert roles == ["user", "assistant"] * 3
