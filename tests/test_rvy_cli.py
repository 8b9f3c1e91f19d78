"""The `parley` command on bad input the review found still ending in a traceback or a wrong
status: each is one line on stderr and the documented exit status."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.cli import main
from bot.errors import SchemaTooNew, StorageError
from bot.storage import migrate
from bot.storage.database import ensure_sqlite_folder
from tests.processes import parley_env


@pytest.fixture
def parley(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An SQLite database and a home in tmp_path, no other PARLEY_* setting."""
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_kb_add_reports_a_link_loop_as_failed_and_adds_the_rest(
    parley: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link to itself, named directly, made Path.resolve raise RuntimeError (a traceback)."""
    loop = parley / "loop.md"
    loop.symlink_to(loop)
    (parley / "good.md").write_text("# Guide\n\nThe answer is in the guide.\n")
    assert main(["kb", "add", str(loop), str(parley / "good.md")]) == 1
    err = capsys.readouterr().err
    assert f"failed {loop}: Too many levels of symbolic links" in err
    assert f"added {parley}/good.md" in err
    assert "Traceback" not in err
    assert main(["kb", "remove", str(loop)]) == 1  # nothing stored under it: not a traceback
    assert "Traceback" not in capsys.readouterr().err


def test_eval_set_that_is_not_utf8_is_one_line(
    parley: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = parley / "latin1.jsonl"
    bad.write_bytes(b'# a comment\n{"skill": "ask", "question": "caf\xe9?"}\n')
    assert main(["eval", "--set", str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"parley: error: evaluation set {bad}, line 2: not UTF-8 text"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:abc",
        "redis://localhost:70000/0",
        "redis://:pa/ss-s3cret@localhost:6379",  # "/" ends the host: urllib reads "pa" as the port
        "redis://localhost:6379?socket_timeout=soon",
    ],
)
def test_a_redis_url_redis_cannot_read_is_refused_at_load(
    url: str, parley: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_REDIS__URL", url)
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("parley: error: invalid setting PARLEY_REDIS__URL: not a valid Redis URL")
    assert "s3cret" not in err and "pa/ss" not in err


def _from_newer_parley(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")


def test_doctor_and_commands_on_a_database_from_a_newer_parley(
    parley: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Auto-migrate cannot fix it (doctor said "[ok] ... (migrated on start)" and exited 0),
    and no restart helps (commands exited 3): a problem, and a configuration status."""
    assert main(["db", "upgrade"]) == 0
    _from_newer_parley(parley / "parley.db")
    capsys.readouterr()
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert (
        "[PROBLEM] database schema: database schema is at revision f00d, which this code does "
        "not know: it was migrated by a newer version of Parley\n"
    ) in out
    assert "migrated on start" not in out
    for command in (["usage"], ["db", "upgrade"], ["chat"]):
        assert main(command) == 2, command
        assert len(capsys.readouterr().err.splitlines()) == 1


async def test_a_database_from_a_newer_parley_raises_schema_too_new(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url)
    _from_newer_parley(tmp_path / "parley.db")
    for attempt in (migrate.check_schema(url), migrate.upgrade(url), migrate.downgrade(url)):
        with pytest.raises(SchemaTooNew, match="migrated by a newer version of Parley"):
            await attempt


def test_doctor_still_counts_an_old_schema_fixed_on_start(
    parley: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SchemaOutOfDate alone is what auto-migrate fixes: an empty SQLite file stays [ok]."""
    sqlite3.connect(parley / "parley.db").close()
    assert main(["doctor"]) == 0
    assert "(migrated on start)" in capsys.readouterr().out


def test_an_sqlite_folder_that_cannot_be_made_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(StorageError) as caught:
        ensure_sqlite_folder(f"sqlite+aiosqlite:///{tmp_path}/taken/db/parley.db")
    assert str(caught.value) == (
        f"cannot make the database folder {tmp_path}/taken/db: Not a directory"
    )
