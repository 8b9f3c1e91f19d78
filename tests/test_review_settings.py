"""Review findings on database.url's SQLite parameter check (bot.settings)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.settings import DatabaseSettings


@pytest.mark.parametrize("parameter", ["mode=RW", "mode=Ro", "cache=Shared", "cache=PRIVATE"])
def test_sqlite_uri_modes_are_checked_in_sqlites_own_case(tmp_path: Path, parameter: str) -> None:
    """SQLite compares `mode` and `cache` case-sensitively (sqlite3ParseUri: memcmp), so
    `mode=RW` fails every connection ('no such access mode: RW'); the check took any case and
    let it through to fail later, not as the one line at load that it promises."""
    database = f"file:{tmp_path}/p.db"
    with pytest.raises(sqlite3.OperationalError):  # SQLite's own refusal
        sqlite3.connect(f"{database}?{parameter}", uri=True).execute("select 1")
    with pytest.raises(ValidationError, match=parameter.split("=")[0]):
        DatabaseSettings(url=f"sqlite+aiosqlite:///{database}?uri=true&{parameter}")  # type: ignore[arg-type]


def test_sqlite_uri_booleans_still_take_any_case(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///file:{tmp_path}/p.db?uri=true&immutable=YES&mode=rwc"
    DatabaseSettings(url=url)  # type: ignore[arg-type]
