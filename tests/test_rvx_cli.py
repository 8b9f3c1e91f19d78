"""The `parley` command where the machine is in the way: one line and a failure status, never
a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from tests.processes import parley_env


@pytest.mark.parametrize("command", [["db", "current"], ["usage"], ["kb", "list"]])
def test_an_sqlite_folder_that_cannot_be_made_is_one_line(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The database's folder would be made under a regular file (as under a read-only mount
    or a folder of another user): every command stops with one line, status 3."""
    (tmp_path / "taken").write_text("a file, not a folder")
    url = f"sqlite+aiosqlite:///{tmp_path}/taken/db/parley.db"
    for name, value in parley_env(tmp_path, {"PARLEY_DATABASE__URL": url}).items():
        monkeypatch.setenv(name, value)
    assert main(command) == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("parley: error: ") and "taken" in err


def test_doctor_names_an_sqlite_folder_that_cannot_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parley doctor` makes nothing: the folder that cannot be made is its PROBLEM line."""
    (tmp_path / "taken").write_text("a file, not a folder")
    url = f"sqlite+aiosqlite:///{tmp_path}/taken/db/parley.db"
    for name, value in parley_env(tmp_path, {"PARLEY_DATABASE__URL": url}).items():
        monkeypatch.setenv(name, value)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"[PROBLEM] database: SQLite {url.split('///')[1]} cannot be created: " in out
    assert f"{tmp_path}/taken is a file, not a folder" in out


def test_kb_add_of_folders_with_nothing_to_take_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong folder (empty, or only unsupported files) added nothing: status 1, not 0."""
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "binaries").mkdir()
    (tmp_path / "binaries" / "tool.exe").write_bytes(b"MZ")
    assert main(["kb", "add", str(tmp_path / "empty"), str(tmp_path / "binaries")]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"parley: nothing to add: no supported files in {tmp_path}/empty, {tmp_path}/binaries"
    ]


def test_db_current_on_a_fresh_data_folder_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parley db current` only reads: on a fresh PARLEY_HOME it made the data folder and an
    empty parley.db (a mistyped path then looked like a database with no schema), where
    `parley doctor` makes nothing. It says there is no database yet, and leaves none."""
    home = tmp_path / "home"
    url = f"sqlite+aiosqlite:///{home}/parley.db"
    for name, value in parley_env(tmp_path, {"PARLEY_DATABASE__URL": url}).items():
        monkeypatch.setenv(name, value)
    assert main(["db", "current"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"schema revision: none (no database at {home}/parley.db yet")
    assert not home.exists()
