"""Settings and arguments a trial found taken as they were: Discord access lists of names
(a block list that blocked nobody), and command-line ids that were not UTF-8 (a traceback on
SQLite, "database error" and exit 3 on PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main

pytestmark = pytest.mark.usefixtures("operator_folder")


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"PARLEY_DISCORD__ACCESS__BLOCKED_USERS": "@bob,troll#1234"},
         "discord.access.blocked_users: '@bob', 'troll#1234' is not a Discord id"),
        ({"PARLEY_DISCORD__ACCESS__BLOCKED_ROLES": "Muted"},
         "discord.access.blocked_roles: 'Muted' is not a Discord id"),
        ({"PARLEY_DISCORD__ACCESS__ADMINS": "18446744073709551616"},  # 2**64
         "discord.access.admins: '18446744073709551616' is not a Discord id"),
        ({"PARLEY_DISCORD__GUILD_IDS": "[-5]"}, "PARLEY_DISCORD__GUILD_IDS"),
        ({"PARLEY_DISCORD__SHARD_COUNT": "2", "PARLEY_DISCORD__SHARD_IDS": "[1,1]"},
         "discord.shard_ids: each shard once"),
        ({"PARLEY_CONSOLE__CHAT": ""}, "PARLEY_CONSOLE__CHAT: must not be empty"),
        ({"PARLEY_CONSOLE__USER": "u" * 300}, "PARLEY_CONSOLE__USER: 300 characters; at most 255"),
    ],
)  # fmt: skip
def test_settings_that_could_never_match_are_refused(
    variables: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    status = main(["config"])
    out, err = capsys.readouterr()
    assert (status, out) == (2, ""), err
    assert err.startswith("parley: error: invalid setting ") and err.count("\n") == 1, err
    assert says in err, err


def test_discord_ids_as_discord_gives_them_are_taken(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DISCORD__ACCESS__ADMINS", "80351110224678912,18446744073709551615")
    monkeypatch.setenv("PARLEY_DISCORD__GUILD_IDS", "[613425648685547541]")
    assert main(["config"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["usage", "--user", "telegram:\udcff\udcfe"],
         "argument --user: not UTF-8 text at character 10"),
        (["chat", "--user", "x\udcff"], "argument --user: not UTF-8 text at character 2"),
        (["chat", "--chat", "x\x01"],
         "argument --chat: control character U+0001 at character 2 cannot be stored"),
        # Empty: taken as "the default" without a word; too long: PostgreSQL's "value too
        # long" at the first message, exit 3 (SQLite kept it whole). A new user's trial.
        (["chat", "--chat", ""], "argument --chat: must not be empty"),
        (["chat", "--user", " "], "argument --user: must not be empty"),
        (["chat", "--chat", "c" * 256], "argument --chat: 256 characters; at most 255"),
    ],
)  # fmt: skip
def test_ids_the_history_cannot_keep_are_refused_before_anything_runs(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    out, err = capsys.readouterr()
    assert (ended.value.code, out) == (2, "")
    assert err.splitlines()[-1].endswith(says), err
    assert "Traceback" not in err
    assert not (tmp_path / "home").exists()  # no database was made


def test_usage_table_writes_control_characters_out() -> None:
    """A subject's id is an adapter's: an escape sequence in it must not reach the operator's
    terminal when `parley usage` prints its table."""
    from bot.usage_cli import _COLUMNS, _table

    row = dict.fromkeys(_COLUMNS, 1) | {"day": "2026-12-03", "budget": "user"}
    table = _table([row | {"who": "x:\x1b[2J\x07ok\u200bé"}])
    assert "\x1b" not in table and "\x07" not in table and "\u200b" not in table
    assert "x:\\x1b[2J\\x07ok\\u200bé" in table
