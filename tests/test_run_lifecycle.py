"""`parley run` as a process, the way an operator and a process manager see it: an adapter
that cannot start is one line and exit status 3; the end of console input ends the console
only; SIGTERM during a streamed answer lets it finish and exits 0."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.cli import main
from bot.storage import migrate
from tests.crash_cluster import TcpProxy
from tests.fake_chatwoot import BOT_SECRET as CHATWOOT_SECRET
from tests.fake_chatwoot import TOKEN as CHATWOOT_TOKEN
from tests.fake_chatwoot import FakeChatwoot
from tests.ports import free_port
from tests.processes import finish, parley_env, parley_run
from tests.slow_model import MODEL, SlowModel
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_updates import text_update


def _telegram(base_url: str, **more: str) -> dict[str, str]:
    return {
        "PARLEY_ADAPTERS": "telegram",
        "PARLEY_TELEGRAM__TOKEN": TOKEN,
        "PARLEY_TELEGRAM__BASE_URL": base_url,
        "PARLEY_TELEGRAM__STREAM_INTERVAL_S": "0.1",
        **more,
    }


async def test_a_token_the_bot_api_refuses_is_one_line_and_exit_3(tmp_path: Path) -> None:
    api = FakeBotApi()
    async with api.serving() as base_url:
        env = _telegram(base_url, PARLEY_TELEGRAM__TOKEN="123:revoked")
        async with parley_run(tmp_path, env) as process:
            status, err = await finish(process)
    assert status == 3
    assert err == (
        "parley: error: the telegram adapter could not start: the Bot API refused the token "
        "(401 Unauthorized): check PARLEY_TELEGRAM__TOKEN\n"
    )
    assert "revoked" not in err


async def test_end_of_console_input_leaves_telegram_running(tmp_path: Path) -> None:
    api = FakeBotApi()
    async with api.serving() as base_url:
        env = _telegram(base_url, PARLEY_ADAPTERS="console,telegram")
        async with parley_run(tmp_path, env) as process:  # stdin: at its end at once
            api.push_update(text_update(1, 42, "/help"))
            async with asyncio.timeout(60):
                (answer,) = await api.wait_for_messages(42, 1)
            assert "/reset" in answer
            assert process.returncode is None
            process.send_signal(signal.SIGTERM)
            status, err = await finish(process)
    assert status == 0, err
    assert "Traceback" not in err


async def test_sigterm_during_a_streamed_answer_lets_it_finish(tmp_path: Path) -> None:
    model = SlowModel(words=12, delay_s=0.2)
    api = FakeBotApi()
    async with model.serving() as model_url, api.serving() as base_url:
        env = _telegram(
            base_url,
            PARLEY_BACKEND__KIND="openai",
            PARLEY_BACKEND__BASE_URL=model_url,
            PARLEY_BACKEND__MODEL=MODEL,
            PARLEY_SHUTDOWN_GRACE_S="8",
        )
        async with parley_run(tmp_path, env) as process:
            api.push_update(text_update(1, 42, "tell me"))
            async with asyncio.timeout(60):
                await model.streaming.wait()
            process.send_signal(signal.SIGTERM)
            status, err = await finish(process)
    assert status == 0, err
    assert model.finished == 1
    words = ["re:tell", "me", *(f"w{n}" for n in range(1, 12))]
    assert api.texts(42)[-1].split() == words


async def test_a_stop_ends_soon_after_the_grace_when_the_database_hangs(
    tmp_path: Path, postgres_url: str
) -> None:
    """PostgreSQL that takes connections and never answers held a SIGTERM for two minutes
    (a turn's last write, the usage flush, closing the pools), past any process manager's
    kill; now the process ends 2 s after the grace with one line, status 3, and what was cut
    stays pending in SQL."""
    await migrate.upgrade(postgres_url)
    target = sa.make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    through = target.set(host="127.0.0.1", port=proxy.port)
    api = FakeBotApi()
    try:
        async with api.serving() as base_url:
            env = _telegram(
                base_url,
                PARLEY_DATABASE__URL=through.render_as_string(hide_password=False),
                PARLEY_SHUTDOWN_GRACE_S="2",
            )
            async with parley_run(tmp_path, env) as process:
                api.push_update(text_update(1, 42, "/help"))
                async with asyncio.timeout(60):
                    await api.wait_for_messages(42, 1)
                proxy.frozen = True
                api.push_update(text_update(2, 42, "are you there?"))
                await asyncio.sleep(1.0)  # its record is waiting on the database
                process.send_signal(signal.SIGTERM)
                # Ended by the hard stop, which says so below (before it, `finish`'s guard of
                # EXIT_WITHIN_S failed: the stop took two minutes).
                status, err = await finish(process)
    finally:
        proxy.frozen = False
        await proxy.aclose()
    assert status == 3, err
    assert err.endswith(
        "parley: error: the stop did not finish within 4 s (a database or service that does "
        "not answer): exiting; unanswered messages stay pending in SQL\n"
    )
    assert "Traceback" not in err


async def test_the_http_servers_own_lines_are_in_the_configured_format(tmp_path: Path) -> None:
    """uvicorn printed its own lines through a handler of its own ("WARNING:  Invalid HTTP
    request received." for any client's garbage), in the middle of the JSON lines a log
    collector reads, and past the redaction filter. They go to Parley's handlers now."""
    port = free_port()
    env = {"PARLEY_ADAPTERS": "support", "PARLEY_HTTP__PORT": str(port)}
    env["PARLEY_LOG_FORMAT"] = "json"
    async with parley_run(tmp_path, env) as process:
        async with asyncio.timeout(60):
            while True:  # until it listens
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.2)
        writer.write(b"GARBAGE / HTTP/1.1\r\n\r\n")
        assert (await reader.read(100)).startswith(b"HTTP/1.1 400")
        writer.close()
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        status, err = await finish(process)
    assert status == 0
    lines = [json.loads(line) for line in err.splitlines()]  # each one a JSON object
    said = [(line["level"], line["logger"], line["message"]) for line in lines]
    assert ("WARNING", "uvicorn.error", "Invalid HTTP request received.") in said


async def test_a_chatwoot_that_does_not_answer_or_refuses_the_token_ends_start_up(
    tmp_path: Path,
) -> None:
    """The Chatwoot adapter started with Chatwoot out of reach, or its token refused, and said
    nothing (a new operator's walkthrough); Telegram's and Discord's end start-up with one
    line. Chatwoot's does too now, exit 3."""
    fake = FakeChatwoot()
    port = free_port()

    def chatwoot(url: str, token: str) -> dict[str, str]:
        return {
            "PARLEY_ADAPTERS": "chatwoot",
            "PARLEY_HTTP__PORT": str(port),
            "PARLEY_CHATWOOT__URL": url,
            "PARLEY_CHATWOOT__API_ACCESS_TOKEN": token,
            "PARLEY_CHATWOOT__WEBHOOK_SECRET": CHATWOOT_SECRET,
        }

    async with fake.serving() as base_url:
        async with parley_run(tmp_path, chatwoot(base_url, "not-the-token")) as process:
            status, err = await finish(process)
        assert (status, err) == (
            3,
            "parley: error: the chatwoot adapter could not start: Chatwoot refused the API "
            "access token (401 Invalid Access Token): check PARLEY_CHATWOOT__API_ACCESS_TOKEN\n",
        )
        async with parley_run(tmp_path, chatwoot(base_url, CHATWOOT_TOKEN)) as process:
            # Started: its HTTP server listens once start-up is over (a stop signal before
            # then ends the process as the signal's default does, -15, on a loaded machine).
            async with asyncio.timeout(60):
                while True:
                    assert process.returncode is None
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", port)
                        writer.close()
                        break
                    except OSError:
                        await asyncio.sleep(0.2)
            await asyncio.sleep(1)  # and stays up
            assert process.returncode is None
            process.send_signal(signal.SIGTERM)
            assert (await finish(process))[0] == 0
    async with parley_run(tmp_path, chatwoot(base_url, CHATWOOT_TOKEN)) as process:
        status, err = await finish(process)  # nothing listens there any more
    assert (status, err) == (
        3,
        "parley: error: the chatwoot adapter could not start: no Chatwoot answers at 127.0.0.1 "
        "(GET /api: ConnectError): check PARLEY_CHATWOOT__URL and that Chatwoot runs and is "
        "reachable from here\n",
    )


async def _console_program(
    tmp_path: Path, program: str, stdin: int = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """`python -c program` with the console adapter configured, its output read here."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        cwd=tmp_path,
        env=parley_env(tmp_path, {"PARLEY_ADAPTERS": "console"}),
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


# After `parley run` returns, as during the interpreter's exit: a second stop signal.
_SIGNALS_AFTER_THE_RUN = """
import os, signal, sys
from bot.cli import main
status = main(["run"])  # stopped by the test's SIGTERM
os.kill(os.getpid(), signal.SIGTERM)
os.kill(os.getpid(), signal.SIGINT)
os.kill(os.getpid(), signal.SIGHUP)
print("ended", status)
"""


async def test_a_second_stop_signal_as_the_process_ends_changes_nothing(tmp_path: Path) -> None:
    """A double Ctrl-C, or a second SIGTERM, a tenth of a second after the first killed the
    process by that signal (status 130 or 143) once its stop was done: closing the event
    loop, then the interpreter's exit, gave the signals back to their defaults while the
    process still ended (about half a second). Here the second signals come right after
    `parley run` returned, as they would during the interpreter's exit."""
    process = await _console_program(tmp_path, _SIGNALS_AFTER_THE_RUN, asyncio.subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"/help\n")
    await process.stdin.drain()
    async with asyncio.timeout(60):  # the run is under way once /help is answered
        while b"/reset" not in await process.stdout.readline():
            pass
    process.send_signal(signal.SIGTERM)  # the first: the stop
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert (process.returncode, out.decode().splitlines()[-1:]) == (0, ["ended 0"]), err


def test_a_run_that_ends_with_its_input_leaves_no_timer_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a stop signal starts the hard-stop timer: a run ended by the end of its input
    (`parley chat` fed a file, a program calling `main` as these tests do) started it as its
    loop closed, and the program was ended with status 3 ten seconds later, whatever it did
    then (CI's pytest, in the middle of another test)."""
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/parley.db")
    monkeypatch.setenv("PARLEY_KNOWLEDGE__LOAD_SAMPLE", "false")
    monkeypatch.setattr("sys.stdin", io.StringIO("/help\n"))
    assert main(["chat"]) == 0
    assert "/reset" in capsys.readouterr().out
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


# A program that embeds Parley runs the adapters until their inputs end (no hard stop asked
# for), then goes on: Ctrl-C and SIGTERM must still end it.
_EMBEDDED_AFTER_THE_RUN = """
import asyncio, os, signal
from adapters.kit.runner import run_adapters
from bot.app import Parley
from bot.settings import load_settings

async def embedded() -> None:
    async with Parley(load_settings()) as app:
        await run_adapters(app, ["console"])

asyncio.run(embedded())
print("run over", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
print("still running after SIGTERM", flush=True)
"""


async def test_an_embedding_program_is_still_ended_by_a_stop_signal_after_the_run(
    tmp_path: Path,
) -> None:
    """run_adapters without a hard stop (an embedding program's; no timer bounds what comes
    after) left SIGINT, SIGTERM and SIGHUP ignored for the rest of the program's life: once
    the adapters were done, neither Ctrl-C nor a process manager's SIGTERM ended it, only
    SIGKILL. Without a hard stop they are given back to their defaults, as before."""
    process = await _console_program(tmp_path, _EMBEDDED_AFTER_THE_RUN)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert (process.returncode, out.decode().splitlines()[-1:]) == (
        -signal.SIGTERM,
        ["run over"],
    ), err
