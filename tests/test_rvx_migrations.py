"""Migrations as operators meet them: workers that start at once on one empty database, and a
database that a newer Parley migrated."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from bot.cli import main
from bot.errors import StorageError
from bot.storage import migrate
from tests.processes import ROOT, parley_env

WORKERS = 4
# Each worker loads everything first and migrates only when told to, so that all of them run
# into the empty schema together (not one after another as they finish importing).
_WORKER = """
import asyncio, sys
from bot.storage import migrate
print("ready", flush=True)
sys.stdin.readline()
asyncio.run(migrate.ensure_schema(sys.argv[1], True))
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_workers_starting_at_once_on_an_empty_database_all_start(empty_db: str) -> None:
    pipe = asyncio.subprocess.PIPE
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, empty_db, cwd=ROOT, stdin=pipe, stdout=pipe, stderr=pipe
        )
        for _ in range(WORKERS)
    ]
    async with asyncio.timeout(120):
        for worker in workers:
            assert worker.stdout is not None
            assert await worker.stdout.readline() == b"ready\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
        errors = [(await worker.communicate())[1] for worker in workers]
    failures = [err.decode()[-300:] for w, err in zip(workers, errors, strict=True) if w.returncode]
    assert failures == []
    assert await migrate.current(empty_db) == migrate.head()


def _from_newer_parley(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00d'")


async def test_auto_migrate_refuses_a_database_from_newer_code(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url)
    _from_newer_parley(tmp_path / "parley.db")
    for attempt in (
        migrate.ensure_schema(url, None),
        migrate.upgrade(url),
        migrate.downgrade(url),
    ):
        with pytest.raises(StorageError, match="migrated by a newer version of Parley"):
            await attempt
    assert await migrate.current(url) == "f00d"


def test_commands_on_a_database_from_newer_code_say_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    assert main(["db", "upgrade"]) == 0
    _from_newer_parley(tmp_path / "parley.db")
    capsys.readouterr()
    for command in (["usage"], ["kb", "list"], ["support", "site", "list"], ["db", "upgrade"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [
            "parley: error: database schema is at revision f00d, which this code does not "
            "know: it was migrated by a newer version of Parley"
        ], command


async def test_an_sqlite_migration_stopped_by_a_full_disk_is_finished_once_there_is_room(
    tmp_path: Path,
) -> None:
    """Alembic ran SQLite's DDL outside a transaction: a disk that filled during 0008's table
    copy left `_alembic_tmp_conversations` behind at revision 0007, and every later upgrade
    and start failed on "table _alembic_tmp_conversations already exists" (a review with a
    6 MB tmpfs). The disk is full here by SQLite's own page limit on each connection."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url, "0007")
    with sqlite3.connect(tmp_path / "parley.db") as db:
        db.executemany(
            "INSERT INTO conversations (platform, chat_id, summary) VALUES ('t', ?, ?)",
            [(str(n), "a summary of the talk so far " * 20) for n in range(3000)],
        )
        pages = db.execute("PRAGMA page_count").fetchone()[0]

    def full_disk(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count = {pages + 20}")
        cursor.close()

    event.listen(Engine, "connect", full_disk)
    try:
        with pytest.raises(StorageError, match="full"):
            await migrate.upgrade(url)
    finally:
        event.remove(Engine, "connect", full_disk)
    assert await migrate.current(url) == "0007"
    await migrate.upgrade(url)  # room again
    assert await migrate.current(url) == migrate.head()
    with sqlite3.connect(tmp_path / "parley.db") as db:
        assert db.execute("SELECT count(*) FROM conversations").fetchone()[0] == 3000
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not [t for t in tables if t.startswith("_alembic_tmp")]


async def test_a_table_copy_left_by_an_interrupted_sqlite_revision_is_dropped(
    tmp_path: Path,
) -> None:
    """A database that an earlier version left half-way through 0008's copy upgrades."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url, "0007")
    with sqlite3.connect(tmp_path / "parley.db") as db:
        db.execute("INSERT INTO conversations (platform, chat_id) VALUES ('t', '1')")
        db.execute("CREATE TABLE _alembic_tmp_conversations (id INTEGER, platform TEXT)")
    await migrate.upgrade(url)
    assert await migrate.current(url) == migrate.head()
    with sqlite3.connect(tmp_path / "parley.db") as db:
        assert db.execute("SELECT chat_id FROM conversations").fetchall() == [("1",)]
