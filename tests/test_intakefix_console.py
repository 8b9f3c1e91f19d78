"""The console's intake against what a shell does to it: bytes that are not UTF-8 with a model
that counts tokens (vLLM's /tokenize), a reader of stdout that leaves (`| head -1`), and a
turn of another console chat left pending by an earlier run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter, ConsoleSettings
from bot import phrases
from bot.app import Parley
from bot.settings import load_settings
from bot.storage.base import StoredMessage
from bot.storage.database import create_engine
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Role
from tests.fault_server import MODEL, FaultServer, fault_server
from tests.processes import ROOT, parley_env

TIMEOUT_S = 120
NOT_UTF8 = b"caf\xe9 au lait\nsecond line\n"
CLEANED = "caf\ufffd au lait"


@pytest.fixture
def model() -> Iterator[FaultServer]:
    """An OpenAI-compatible stand-in with /tokenize, as vLLM serves it."""
    with fault_server("m") as server:
        yield server


def _model_env(server: FaultServer) -> dict[str, str]:
    return {
        "PARLEY_BACKEND__KIND": "openai",
        "PARLEY_BACKEND__BASE_URL": server.base_url,
        "PARLEY_BACKEND__MODEL": MODEL,
    }


def _chat(
    tmp_path: Path,
    chat: str,
    stdin: bytes,
    *,
    env: dict[str, str] | None = None,
    stdout: int = subprocess.PIPE,
) -> subprocess.CompletedProcess[bytes]:
    """`parley chat --chat CHAT` as a shell runs it, stdin and stdout as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat", "--chat", chat],
        input=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=parley_env(tmp_path, env or {}),
        cwd=ROOT,
        timeout=TIMEOUT_S,
        check=False,
    )


async def _history(tmp_path: Path, chat: str) -> tuple[list[StoredMessage], list[StoredMessage]]:
    """The chat's messages and those of them still pending, from the database itself."""
    store = SqlStore(create_engine(f"sqlite+aiosqlite:///{tmp_path}/parley.db"))
    await store.start()
    try:
        cid = await store.conversation_id(ConversationKey("console", chat))
        assert cid is not None
        return list(await store.history(cid, 100)), list(await store.pending(cid, 100))
    finally:
        await store.aclose()


def _contents(messages: Sequence[StoredMessage]) -> list[str]:
    return [m.content for m in messages]


# --- 1. a byte that is not UTF-8, with a model that counts tokens -------------------------------


async def test_lone_surrogates_reach_the_model_and_the_database_as_replacement_characters(
    tmp_path: Path, model: FaultServer
) -> None:
    """The core cleans the text before anything reads it: here a stdin that keeps each byte
    it cannot decode as a lone surrogate (Python's surrogateescape, the C locale's stdin)."""
    settings = load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
        backend={"kind": "openai", "base_url": model.base_url, "model": MODEL},
    )
    stdin = io.TextIOWrapper(io.BytesIO(NOT_UTF8), encoding="utf-8", errors="surrogateescape")
    out = io.StringIO()
    async with Parley(settings) as app:
        console = ConsoleAdapter(
            app.intake, ConsoleSettings(chat="odd"), stdin=stdin, stdout=out, interactive=False
        )
        app.intake.register(console.platform, console, ConsoleSettings().access)
        await console.run()
    assert out.getvalue().splitlines() == model.sent
    assert model.requests["/tokenize"] > 1  # the probe, then the messages' counts
    messages, pending = await _history(tmp_path, "odd")
    assert _contents(messages) == [CLEANED, model.sent[0], "second line", model.sent[1]]
    assert pending == []


@pytest.mark.parametrize("stdin_encoding", ["", "utf-8:strict"])
def test_parley_chat_reads_undecodable_bytes_as_replacement_characters(
    tmp_path: Path, model: FaultServer, stdin_encoding: str
) -> None:
    """The stdin encoding: this machine's default (surrogateescape), or what an en_US.UTF-8
    locale gives (strict), where the first such byte stopped the reading and the chat waited
    for ever."""
    env = _model_env(model) | ({"PYTHONIOENCODING": stdin_encoding} if stdin_encoding else {})
    done = _chat(tmp_path, "odd10", NOT_UTF8, env=env)
    assert (done.returncode, done.stderr.decode()) == (0, "")
    assert done.stdout.decode().splitlines() == model.sent
    assert len(model.sent) == 2


async def test_parley_chat_keeps_the_line_it_read_as_replacement_characters(
    tmp_path: Path, model: FaultServer
) -> None:
    done = _chat(tmp_path, "odd11", NOT_UTF8, env=_model_env(model))
    assert done.returncode == 0, done.stderr.decode()
    messages, pending = await _history(tmp_path, "odd11")
    assert _contents(messages)[::2] == [CLEANED, "second line"]
    assert pending == []


# --- 2. the reader of stdout left ---------------------------------------------------------------


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has left already (`| head -0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


async def test_a_reader_that_left_ends_the_chat_with_141_and_leaves_the_turn_pending(
    tmp_path: Path,
) -> None:
    stdout = _closed_pipe()
    try:
        done = _chat(tmp_path, "pipe1", b"/help\n" * 30, stdout=stdout)
    finally:
        os.close(stdout)
    assert (done.returncode, done.stderr.decode()) == (141, "")
    messages, pending = await _history(tmp_path, "pipe1")
    # The answer nobody could see is pending, once, not settled with an apology; the lines
    # after it were never read.
    assert _contents(messages) == ["/help"]
    assert _contents(pending) == ["/help"]

    again = _chat(tmp_path, "pipe1", b"/history\n")
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout.decode().startswith("Commands:\n")  # the pending turn, answered now
    messages, pending = await _history(tmp_path, "pipe1")
    asked = [m.content for m in messages if m.role is Role.USER]
    answers = [m.content for m in messages if m.role is Role.ASSISTANT]
    assert asked == ["/help", "/history"]
    assert len(answers) == 2 and sum(a.startswith("Commands:") for a in answers) == 1
    assert pending == []
    assert not any(phrases.GENERIC in m.content for m in messages)


def test_a_reader_that_left_after_one_line_gets_no_traceback(tmp_path: Path) -> None:
    """`parley chat | head -1`: the shell's own pipe, a reader that takes a line and leaves."""
    script = f"""
        for i in $(seq 30); do echo /help; done \\
        | "{sys.executable}" -m bot.cli chat --chat pipe2 2>"{tmp_path}/err" | head -1
        echo "status=${{PIPESTATUS[1]}}"
    """
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=parley_env(tmp_path, {}),
        cwd=ROOT,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.stdout == "Commands:\nstatus=141\n"
    assert (tmp_path / "err").read_text() == ""


# --- 3. a pending turn of another console chat --------------------------------------------------


async def test_a_recovered_turn_of_another_chat_is_answered_but_not_printed_here(
    tmp_path: Path,
) -> None:
    stdout = _closed_pipe()
    try:
        left = _chat(tmp_path, "chat-x", b"/help\n", stdout=stdout)
    finally:
        os.close(stdout)
    assert left.returncode == 141
    other = _chat(tmp_path, "totally-other", b"/history\n")
    assert other.returncode == 0, other.stderr.decode()
    assert "Commands:" not in other.stdout.decode()  # only its own /history's answer
    assert "/help" not in other.stdout.decode()
    messages, pending = await _history(tmp_path, "chat-x")
    assert [m.content.split("\n")[0] for m in messages] == ["/help", "Commands:"]
    assert pending == []
