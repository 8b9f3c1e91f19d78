"""An SQLite file that cannot be opened or written says why, as far as Parley can see: SQLite
says "unable to open database file" for a read-only mount as for a missing folder, and every
command printed only that (an operator's review)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.storage.database import describe_error


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/gone/parley.db"
    said = describe_error(sqlite3.OperationalError("unable to open database file"), url)
    assert said == (
        "database error: OperationalError: unable to open database file "
        f"(its folder {tmp_path}/gone does not exist)"
    )


def test_a_read_only_file_system_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The mount's flags as the kernel reports them: a test cannot mount one read-only.
    real = os.statvfs
    monkeypatch.setattr(
        os, "statvfs", lambda p: SimpleNamespace(f_flag=real(p).f_flag | os.ST_RDONLY)
    )
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    for message in ("unable to open database file", "attempt to write a readonly database"):
        said = describe_error(sqlite3.OperationalError(message), url)
        assert said.endswith(f"({tmp_path} is on a read-only file system)")


def test_other_errors_and_servers_get_no_guess(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/gone/parley.db"
    said = describe_error(sqlite3.OperationalError("database is locked"), url)
    assert said == "database error: OperationalError: database is locked"
    server = "postgresql+asyncpg://parley:pw@db/parley"
    said = describe_error(sqlite3.OperationalError("unable to open database file"), server)
    assert said == "database error: OperationalError: unable to open database file"
