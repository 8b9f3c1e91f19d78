"""`parley doctor` finds what `parley run` would refuse: a Discord adapter without a token or
with one Discord refuses, an embedded database whose folder cannot be made, a Telegram
webhook on a path Parley's HTTP server already serves; and settings that could never work
(a Telegram token not shaped like one, an @username as a Telegram id) are refused at once."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from adapters.discord.settings import DiscordSettings
from adapters.telegram.settings import TelegramSettings
from bot.cli import main
from bot.doctor import run_checks
from bot.errors import ConfigError
from bot.settings import Settings, load_settings
from tests.discord_api import TOKEN as DISCORD_TOKEN
from tests.discord_api import FakeDiscordApi
from tests.ports import free_port
from tests.telegram_api import TOKEN, FakeBotApi


def _doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str
) -> tuple[int, str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["doctor"])
    out, err = capsys.readouterr()
    return code, out, err


def _settings(tmp_path: Path, **sections: object) -> Settings:
    return load_settings(None, database={"url": f"sqlite+aiosqlite:///{tmp_path}/d.db"}, **sections)


def test_discord_without_a_token_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "[ok] adapter discord: nothing to check", exit 0, where `parley run` stops with
    "PARLEY_DISCORD__TOKEN: required when the discord adapter runs"."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/d.db")
    code, out, _ = _doctor(monkeypatch, capsys, PARLEY_ADAPTERS="discord")
    assert code == 1, out
    assert "[PROBLEM] adapter discord: PARLEY_DISCORD__TOKEN is not set" in out
    # An empty variable (a compose file's PARLEY_DISCORD__TOKEN=) is no token either.
    code, out, _ = _doctor(monkeypatch, capsys, PARLEY_DISCORD__TOKEN="")
    assert code == 1 and "PARLEY_DISCORD__TOKEN is not set" in out


@pytest.mark.parametrize(("token", "ok"), [(DISCORD_TOKEN, True), ("MTAw.revoked", False)])
async def test_discord_token_is_checked_with_discord(tmp_path: Path, token: str, ok: bool) -> None:
    async with FakeDiscordApi().serving():
        settings = _settings(tmp_path, adapters=["discord"], discord={"token": token})
        out = io.StringIO()
        problems = await run_checks(settings, out=out)
    if ok:
        assert "[ok] adapter discord: bot parley (id 900)" in out.getvalue()
    else:
        assert problems == ["adapter discord: " + _refused()]
    assert token not in out.getvalue()


def _refused() -> str:
    from adapters.discord.adapter import TOKEN_REFUSED

    return TOKEN_REFUSED


@pytest.mark.skipif(
    not Path("/proc/self").is_dir() or os.statvfs("/proc").f_blocks != 0,
    reason="needs Linux's /proc",
)
def test_a_home_where_no_folder_can_be_made_is_a_problem(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PARLEY_HOME=/proc/nope: root may "write" in /proc by os.access, but mkdir fails there,
    so `parley chat` stopped with "cannot make the database folder" after doctor said ok."""
    monkeypatch.delenv("PARLEY_DATABASE__URL", raising=False)
    code, out, _ = _doctor(monkeypatch, capsys, PARLEY_HOME="/proc/nope")
    assert code == 1, out
    assert (
        "[PROBLEM] database: SQLite /proc/nope/parley.db cannot be created: nothing can be "
        "created in /proc (a virtual file system of the kernel)" in out
    )
    assert "backend: none configured" in out  # the other checks ran


def test_a_home_under_a_file_is_still_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.delenv("PARLEY_DATABASE__URL", raising=False)
    code, out, _ = _doctor(monkeypatch, capsys, PARLEY_HOME=str(tmp_path / "file" / "home"))
    assert code == 1, out
    assert f"cannot be created: {tmp_path / 'file'} is a file, not a folder" in out
    assert not (tmp_path / "file" / "home").exists()


@pytest.mark.parametrize("path", ["/healthz", "/readyz/"])
async def test_a_webhook_on_a_built_in_path_is_a_problem(tmp_path: Path, path: str) -> None:
    """The Bot API takes the token, but `parley run` would stop with "/healthz is already
    served here": doctor said "[ok] adapter telegram: ... webhook"."""
    api = FakeBotApi()
    async with api.serving() as base_url:
        hook = {"mode": "webhook", "webhook_secret_token": "s3cret"}
        telegram = {"token": TOKEN, "base_url": base_url, **hook}
        settings = _settings(
            tmp_path,
            adapters=["telegram"],
            telegram={**telegram, "webhook_public_url": f"https://bot.example{path}"},
        )
        out = io.StringIO()
        problems = await run_checks(settings, out=out)
        assert problems == [
            f"adapter telegram: http: {path} is already served here (by {path.rstrip('/')}): "
            "give one of them another path (docs/adapters.md, one HTTP server)"
        ]
        free = _settings(
            tmp_path,
            adapters=["telegram"],
            telegram={**telegram, "webhook_public_url": "https://bot.example/telegram"},
        )
        assert await run_checks(free, out=io.StringIO()) == []
    assert "[ok] adapter telegram: bot @parley_bot (id 999), webhook" not in out.getvalue()


@pytest.mark.parametrize("token", ["notatoken", "  ", "123456", ":abc", "123:a b", "12:ab/c"])
def test_a_telegram_token_not_shaped_like_one_is_refused_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str,
) -> None:
    """It went to the network (three tries in `parley run`) with a token Telegram could never
    take; now exit 2 with one line, and the value is not quoted."""
    port = free_port()  # nothing listens: a call to the Bot API would fail otherwise
    code, out, err = _doctor(
        monkeypatch,
        capsys,
        PARLEY_DATABASE__URL=f"sqlite+aiosqlite:///{tmp_path}/d.db",
        PARLEY_ADAPTERS="telegram",
        PARLEY_TELEGRAM__TOKEN=token,
        PARLEY_TELEGRAM__BASE_URL=f"http://127.0.0.1:{port}/bot",
    )
    assert code == 2
    assert out == ""
    assert err == (
        "parley: error: invalid setting PARLEY_TELEGRAM__TOKEN: not a bot token: BotFather's "
        "look like 123456789:AAH... (the bot's id, a colon, then letters, digits, _ and -)\n"
    )


@pytest.mark.parametrize(
    "token", ["MTAw.secret\nX-Injected: 1", "MTAw.sec\x01ret", "Bot MTAw.secret", "MTAw.sécret"]
)
async def test_a_discord_token_not_shaped_like_one_is_refused_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str,
) -> None:
    """A line break or control character in it (a pasted token, a CRLF file) went to
    Discord: aiohttp refused to send the header, `parley doctor` ended with a traceback and
    `parley run` with "ValueError: Forbidden control character"; "Bot " before it was
    refused by Discord as any wrong token. Now exit 2 with one line, the value not quoted."""
    async with FakeDiscordApi().serving():
        code, out, err = await asyncio.to_thread(
            _doctor,
            monkeypatch,
            capsys,
            PARLEY_DATABASE__URL=f"sqlite+aiosqlite:///{tmp_path}/d.db",
            PARLEY_ADAPTERS="discord",
            PARLEY_DISCORD__TOKEN=token,
        )
    assert (code, out) == (2, "")
    assert err == (
        "parley: error: invalid setting PARLEY_DISCORD__TOKEN: not a bot token: the developer "
        'portal\'s (Bot tab) are letters, digits, ., _ and - only (without "Bot " before them)\n'
    )


def test_discord_tokens_as_the_portal_gives_them_are_taken() -> None:
    for token in (DISCORD_TOKEN, "wrong", "MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.ZnCjm1XVW7vRze4b7Cq4"):
        discord = load_settings(None, discord={"token": token}).section("discord")
        assert isinstance(discord, DiscordSettings) and discord.token is not None
        assert discord.token.get_secret_value() == token


def _telegram(**section: object) -> TelegramSettings:
    telegram = load_settings(None, telegram=section).section("telegram")
    assert isinstance(telegram, TelegramSettings)
    return telegram


def test_telegram_tokens_of_any_length_and_an_empty_one() -> None:
    for token in (TOKEN, "1:a", "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw-_"):
        given = _telegram(token=token).token
        assert given is not None and given.get_secret_value() == token
    assert _telegram(token="").token is None


def test_a_telegram_id_that_is_not_a_number_is_refused() -> None:
    """docs/telegram.md: allowed_users are Telegram user ids. "abc" matched no one, and an
    allow list of only that locked everyone out without a word."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, telegram={"access": {"allowed_users": ["abc", 7]}})
    assert "telegram.access.allowed_users: 'abc' is not a Telegram id" in str(caught.value)
    with pytest.raises(ConfigError, match="admins: '@ada' is not a Telegram id"):
        load_settings(None, telegram={"access": {"admins": ["@ada"]}})
    rules = {"allowed_users": [7, "8"], "allowed_chats": [-1001234567890], "admins": ["-5"]}
    assert _telegram(access=rules).access.allowed_chats == ["-1001234567890"]
