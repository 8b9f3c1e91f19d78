"""The console adapter and `parley chat`: streaming, piped stdin, and restarts."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa

from adapters.console import CUT_BY_STOP, ConsoleAdapter, ConsoleSettings
from bot.app import Parley
from bot.errors import AdapterError
from bot.settings import Settings
from bot.storage.base import MessageKind
from bot.storage.models import ConversationRow
from bot.types import Incoming, Role, utcnow
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
    assert "Parley (bot): echo: first message" in before_reset
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


async def test_an_answer_cut_by_a_stop_says_what_becomes_of_it() -> None:
    """A stop that outlasts its grace cancels the turn mid-answer: the half answer stood on
    the terminal with no word of what became of it (an operator's review: SIGTERM during a
    long answer). The message stays pending, and the next start answers it."""
    streaming = asyncio.Event()

    async def long_answer() -> AsyncIterator[str]:
        yield "Once upon a"
        streaming.set()
        await asyncio.Event().wait()  # the model goes on; the stop comes first
        yield "never shown"

    out = io.StringIO()
    console = ConsoleAdapter(
        cast(Any, None), ConsoleSettings(), stdin=io.StringIO(""), stdout=out, interactive=False
    )
    delivering = asyncio.create_task(console.deliver(console.key, long_answer()))
    await streaming.wait()
    delivering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await delivering
    assert out.getvalue() == f"Once upon a{CUT_BY_STOP}\n"
    assert "stays pending" in CUT_BY_STOP


async def _after_a_crashed_run(
    settings: Settings, seen_in_s: float, out: io.StringIO
) -> ConsoleAdapter:
    """A console whose chat holds a crashed run's delivery, last seen `seen_in_s` from now;
    its line "q2" asked and, where it could be, answered in `out`."""
    async with Parley(settings, backend=ScriptedBackend()) as app:
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(), stdin=io.StringIO("q2\n"), stdout=out,
            interactive=False,
        )  # fmt: skip
        # The crashed run: its question recorded, its answer begun, its process gone.
        asked = Incoming(console.key, console.user, "q1", idempotency_key="console:crashed")
        q1 = await app.store.record_incoming(asked, kind=MessageKind.CHAT, token_count=2)
        async with app.store.engine.begin() as conn:
            await conn.execute(
                sa.update(ConversationRow)
                .where(ConversationRow.id == q1.conversation_id)
                .values(delivery_from=q1.message_id, delivery_to=q1.message_id,
                        delivery_epoch=99, delivery_owner="crashed-run",
                        delivery_seen=utcnow() + timedelta(seconds=seen_in_s))
            )  # fmt: skip
        app.intake.register(console.platform, console, ConsoleSettings().access)
        async with asyncio.timeout(60), console:
            await console.run()
    return console


async def test_a_line_waits_for_an_earlier_runs_unfinished_answer_then_is_answered(
    tmp_path: Path,
) -> None:
    """A run that crashed while it showed an answer leaves its delivery in SQL, which the
    next run leaves alone for `delivery_grace_s` after its last sign of life: the turn ended at
    once, and the console took that for "answered", printed nothing and exited 0 with the
    line pending (a helper's review: `kill -9` of parley chat, then a piped run)."""
    settings = Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/chat.db"},  # type: ignore[arg-type]
        conversation={"delivery_grace_s": 2.0},  # type: ignore[arg-type]
    )
    out = io.StringIO()
    console = await _after_a_crashed_run(settings, 0, out)
    assert "echo: q2\n" in out.getvalue() and console.unanswered == 0


async def test_a_line_still_unanswered_in_time_ends_the_chat_with_an_error(
    tmp_path: Path,
) -> None:
    settings = Settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/chat.db"},  # type: ignore[arg-type]
        conversation={"delivery_grace_s": 0.5, "lock_ttl_s": 0.5},  # type: ignore[arg-type]
    )
    with pytest.raises(AdapterError, match=r"1 message\(s\) not answered in time"):
        await _after_a_crashed_run(settings, 60, io.StringIO())  # alive to the end


async def test_escape_sequences_in_an_answer_never_reach_the_terminal(tmp_path: Path) -> None:
    """An answer quotes documents and the model: an OSC 52 sequence in either wrote the
    operator's clipboard, and others set the title or cleared the screen (a helper's review).
    Control characters are shown as U+FFFD; line feeds and tabs stay."""
    clipboard = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUvc2ggfCBzaA==\x07"
    answer = f"{clipboard}Refunds\x1b[2J take\x9b31m 5 days.\r\nSteps:\tone"
    shown = await _chat(_settings(tmp_path), ScriptedBackend(lambda request: answer), "hi\n")
    assert not any(c in shown for c in "\x1b\x07\x9b\r")
    assert shown.endswith("take\ufffd31m 5 days.\ufffd\nSteps:\tone\n")
