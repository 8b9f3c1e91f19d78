"""The console adapter and `parley chat`: streaming, piped stdin, and restarts."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from adapters.console import ConsoleAdapter, ConsoleSettings
from bot.app import Parley
from bot.settings import Settings
from bot.types import Role
from tests.doubles import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]


def _settings(tmp_path: Path) -> Settings:
    return Settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/chat.db"})  # type: ignore[arg-type]


async def _chat(settings: Settings, backend: ScriptedBackend, lines: str) -> str:
    out = io.StringIO()
    async with Parley(settings, backend=backend) as app:
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(), stdin=io.StringIO(lines), stdout=out, interactive=False
        )
        app.intake.register(console.platform, console, ConsoleSettings().access)
        await console.run()
    return out.getvalue()


async def test_conversation_continues_after_restart(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ScriptedBackend()
    assert await _chat(settings, first, "my name is Ada\nnice day\n") == (
        "echo: my name is Ada\necho: nice day\n"
    )
    second = ScriptedBackend()
    await _chat(settings, second, "what is my name?\n")
    (request,) = second.requests
    assert [(m.role, m.content) for m in request.messages[1:]] == [
        (Role.USER, "my name is Ada"),
        (Role.ASSISTANT, "echo: my name is Ada"),
        (Role.USER, "nice day"),
        (Role.ASSISTANT, "echo: nice day"),
        (Role.USER, "what is my name?"),
    ]
    # The prompt after the restart extends the last prompt before it, byte for byte.
    assert list(request.messages[: len(first.requests[-1].messages)]) == list(
        first.requests[-1].messages
    )


def _parley(tmp_path: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PARLEY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
        "PARLEY_CONFIG": str(ROOT / "config" / "parley.toml"),
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args, "chat"],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_parley_chat_with_piped_stdin_keeps_history_across_runs(tmp_path: Path) -> None:
    first = _parley(tmp_path, "hello from run one\n/help\n")
    assert first.returncode == 0, first.stderr
    assert "No language model is configured" in first.stdout
    assert "/history" in first.stdout
    second = _parley(tmp_path, "/history\n/ask how do I migrate the database schema?\n")
    assert second.returncode == 0, second.stderr
    assert "hello from run one" in second.stdout
    # The sample knowledge base (docs/) was loaded on the first run: /ask quotes and cites it.
    assert "[1] History, schema migrations and the cache > Migrations" in second.stdout
    assert "parley db upgrade" in second.stdout
    assert "Traceback" not in first.stderr + second.stderr


def test_parley_chat_bad_setting_is_one_line(tmp_path: Path) -> None:
    env_args = ("--config", str(tmp_path / "missing.toml"))
    result = _parley(tmp_path, "", *env_args)
    assert result.returncode == 2
    assert result.stderr.startswith("parley: error: config file")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: terminal closed
def test_parley_run_stops_cleanly_on_sigterm(tmp_path: Path, stop: signal.Signals) -> None:
    env = {**os.environ, "PARLEY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/run.db"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("/help\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("Commands:")  # it is up and answering
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_python_m_bot_is_the_parley_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: parley ")


async def test_a_piped_reset_waits_for_the_lines_before_it(tmp_path: Path) -> None:
    """Piped input is read while the first answer streams: a /reset among it must not run
    before the lines above it (their answers read the context it empties)."""
    out = await _chat(
        _settings(tmp_path),
        ScriptedBackend(delay=lambda: 0.05),  # every line is read while the first answer streams
        "first message\n/history\n/reset\n/history\n",
    )
    before_reset = out.split("Fresh start", 1)[0]
    # The first /history's listing comes before the reset's sentence, without the /reset.
    assert "Parley: echo: first message" in before_reset
    assert "/reset" not in before_reset


async def test_an_answer_cut_short_still_ends_its_line() -> None:
    """A stop that ends an answer mid-stream (the model went with the process) leaves the
    terminal on a new line: the shell's prompt does not start after the answer's last word."""

    async def cut_short() -> AsyncIterator[str]:
        yield "The lock is"
        raise ConnectionResetError("the model's process stopped")

    out = io.StringIO()
    console = ConsoleAdapter(
        cast(Any, None), ConsoleSettings(), stdin=io.StringIO(""), stdout=out, interactive=False
    )
    with pytest.raises(ConnectionResetError):
        await console.deliver(console.key, cut_short())
    assert out.getvalue() == "The lock is\n"
