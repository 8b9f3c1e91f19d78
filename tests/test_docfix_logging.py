"""Without -v, what a library logs about a failure that Parley reports in its own line, and
discord.py's INFO lines and voice warnings, stay off stderr; -v shows the library's lines.

`main` sets logging up only when the root logger has no handler (as logging.basicConfig):
pytest's capture handler is taken off the root for the call, so that `parley` configures it
as in a fresh process, and put back after."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import discord
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bot.cli import main
from tests.discord_api import TOKEN as DISCORD_TOKEN
from tests.discord_api import FakeDiscordApi
from tests.local_server import serving
from tests.telegram_api import TOKEN

BAD_GATEWAY = "<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"


@contextlib.contextmanager
def _fresh_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def _parley(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, list[str], list[str]]:
    capsys.readouterr()
    with _fresh_root_logger():
        code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def _bad_gateway() -> Starlette:
    """A Bot API behind a proxy whose upstream is down: every call gets the proxy's page."""

    async def page(request: Request) -> Response:
        return HTMLResponse(BAD_GATEWAY, status_code=502)

    return Starlette(routes=[Route("/{path:path}", page, methods=["GET", "POST"])])


def _telegram_at(port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Telegram adapter, on a Bot API at `port`."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/d.db")
    monkeypatch.setenv("PARLEY_ADAPTERS", "telegram")
    monkeypatch.setenv("PARLEY_TELEGRAM__TOKEN", TOKEN)
    monkeypatch.setenv("PARLEY_TELEGRAM__BASE_URL", f"http://127.0.0.1:{port}/bot")


async def test_a_bot_api_answering_a_proxy_page_is_one_line_without_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PTB logs "Can not load invalid JSON data: <the page>" at ERROR with a 20-line
    JSONDecodeError traceback before raising; the doctor line quoted the page too."""
    async with serving(_bad_gateway()) as port:
        _telegram_at(port, tmp_path, monkeypatch)
        code, out, err = await _parley(capsys, "doctor")
        assert code == 1
        assert err == []
        assert (
            "[PROBLEM] adapter telegram: the Bot API cannot be reached: Bad Gateway (502), "
            "and the answer is not the Bot API's (not JSON)"
        ) in out
        assert not any("502 Bad Gateway" in line for line in out)

        code, _, err = await _parley(capsys, "-v", "doctor")
        assert code == 1
        assert any("ERROR telegram.request" in line for line in err)  # shown when asked for


async def test_run_against_a_proxy_page_retries_without_quoting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each retry of getMe logged "Bad Gateway (502). Parsing the server response b'<html>...'
    failed; retry N": the retries say why without the page, then one line and exit 3."""
    async with serving(_bad_gateway()) as port:
        _telegram_at(port, tmp_path, monkeypatch)
        code, _, err = await _parley(capsys, "run")
    assert code == 3
    assert not any("502 Bad Gateway" in line or "Parsing" in line for line in err), err
    assert err[-1] == (
        "parley: error: the telegram adapter could not start: the Bot API cannot be reached: "
        "Bad Gateway (502), and the answer is not the Bot API's (not JSON)"
    )
    retries = [line for line in err if "; retry " in line]
    assert retries and all("not the Bot API's (not JSON); retry" in line for line in retries)


async def test_discord_logs_no_info_lines_nor_voice_warnings_without_verbose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """discord.py printed "PyNaCl is not installed, voice will NOT be supported", the same
    for davey, and "INFO discord.client: logging in using static token"."""
    # As in a new process: discord.py warns once, then turns these off itself.
    monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)
    monkeypatch.setattr(discord.VoiceClient, "warn_dave", True)
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/d.db")
    monkeypatch.setenv("PARLEY_ADAPTERS", "discord")
    monkeypatch.setenv("PARLEY_DISCORD__TOKEN", DISCORD_TOKEN)
    async with FakeDiscordApi().serving():
        code, out, err = await _parley(capsys, "doctor")
        assert code == 0, out
        assert "[ok] adapter discord: bot parley (id 900)" in out
        assert err == []

        monkeypatch.setattr(discord.VoiceClient, "warn_nacl", True)
        code, _, err = await _parley(capsys, "-v", "doctor")
    assert code == 0
    assert any("INFO discord.client: logging in using static token" in line for line in err)
    assert not any("voice will NOT be supported" in line for line in err)  # never wanted
    assert not any(DISCORD_TOKEN in line for line in err)


async def test_discord_warnings_are_still_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only INFO and below are hidden: a library's warning stays one line on stderr."""

    async def warn_then_refuse(request: Request) -> Response:
        logging.getLogger("discord.http").warning("a warning of discord.py's own")
        return Response(status_code=401)

    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/d.db")
    monkeypatch.setenv("PARLEY_ADAPTERS", "discord")
    monkeypatch.setenv("PARLEY_DISCORD__TOKEN", DISCORD_TOKEN)
    app = Starlette(routes=[Route("/api/v10/users/@me", warn_then_refuse)])
    async with serving(app) as port:
        monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
        code, out, err = await _parley(capsys, "doctor")
    assert code == 1
    assert any(
        line.startswith("[PROBLEM] adapter discord: Discord refused the token") for line in out
    )
    assert [line.split(" ", 2)[2] for line in err] == [
        "WARNING discord.http: a warning of discord.py's own"
    ]
