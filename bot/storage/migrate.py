"""Schema migrations, run from code: `parley db upgrade`, and the check at start-up.

Alembic is configured here rather than from alembic.ini (which is only for developers running
`alembic` by hand), and the database URL travels in `Config.attributes`, never in an option
that Alembic could print. Alembic's commands are synchronous and migrations/env.py calls
`asyncio.run`, so they run in a worker thread, off the caller's event loop. Processes that
migrate one database at once take turns (migrations/env.py holds a lock while it migrates).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, make_url

from bot.errors import SchemaOutOfDate, SchemaTooNew, StorageError
from bot.storage.database import create_oneoff_engine, database_error, database_errors

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    # Options are %-interpolated: a literal % in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["url"] = url
    return config


async def upgrade(url: str, revision: str = "head", *, timeout_s: float | None = None) -> None:
    await _run_command(command.upgrade, url, revision, timeout_s)


async def downgrade(url: str, revision: str = "-1", *, timeout_s: float | None = None) -> None:
    await _run_command(command.downgrade, url, revision, timeout_s)


async def past(url: str, revision: str, *, timeout_s: float | None = None) -> str | None:
    """The database's revision when it is a later one than `revision` (an upgrade to it
    would do nothing), else None; also None for a revision Alembic resolves only as it runs
    (relative ones: +1, head-1), which `upgrade` checks itself."""
    script = ScriptDirectory.from_config(alembic_config(""))
    try:
        target = script.get_revision(revision)
    except (CommandError, RevisionError):
        return None
    found = await current(url, timeout_s)
    if found is None or target is None or found == target.revision:
        return None
    _refuse_unknown(found)
    below = {r.revision for r in script.walk_revisions(base="base", head=found)}
    return found if target.revision in below else None


def first() -> str:
    """The oldest revision in migrations/versions."""
    found = ScriptDirectory.from_config(alembic_config("")).get_base()
    if found is None:
        raise StorageError(f"no migrations found in {MIGRATIONS_DIR}")
    return found


def head() -> str:
    """The newest revision in migrations/versions."""
    return _revisions()[0]


async def behind(found: str | None) -> str | None:
    """What a running worker says of a database at revision `found` (/readyz): None at the
    code's head, and at a revision this code does not know (a newer Parley migrated it: in a
    release, `parley db upgrade` runs first and the old workers serve on until they are
    replaced); else one line, the revision found and the one the code needs (a downgrade
    under a running worker, `parley db downgrade` or `alembic` from another host).
    The code's revisions are read the first time in a worker thread: Alembic loads each
    revision's module (tens of ms), which on the event loop held every turn of the worker
    meanwhile. Later calls take no thread (one busy elsewhere cannot hold them)."""
    if _revisions.cache_info().currsize == 0:
        await asyncio.to_thread(_revisions)
    wanted, known = _revisions()
    if found == wanted or (found is not None and found not in known):
        return None
    return (
        f"schema at revision {found or 'none (empty database)'}, this worker needs {wanted}: "
        "run `parley db upgrade`"
    )


@functools.cache
def _revisions() -> tuple[str, frozenset[str]]:
    """The head and every revision of migrations/versions, read once per process (they are
    files of the code, which does not change under it)."""
    script = ScriptDirectory.from_config(alembic_config(""))
    found = script.get_current_head()
    if found is None:
        raise StorageError(f"no migrations found in {MIGRATIONS_DIR}")
    return found, frozenset(rev.revision for rev in script.walk_revisions())


async def current(url: str, timeout_s: float | None = None) -> str | None:
    """The database's revision; None for a database that was never migrated. `timeout_s`
    (`database.timeout_s`): connecting and reading it give up after this long, so that a
    server that takes connections and never answers is one line soon, not the driver's
    minute."""
    engine = create_oneoff_engine(url)
    try:
        async with asyncio.timeout(timeout_s), engine.connect() as conn:
            return await conn.run_sync(_current_revision)
    except TimeoutError as exc:
        if timeout_s is None:  # the driver's own limit
            raise database_error(exc, url) from exc
        raise StorageError(
            f"the database did not answer within {timeout_s:g} s (database.timeout_s)"
        ) from exc
    except database_errors(url) as exc:
        raise database_error(exc, url) from exc
    finally:
        await engine.dispose()


async def check_schema(url: str, *, timeout_s: float | None = None) -> None:
    """Raise SchemaOutOfDate unless the database is at the code's head revision."""
    wanted = head()
    found = await current(url, timeout_s)
    if found == wanted:
        return
    _refuse_unknown(found)
    raise SchemaOutOfDate(
        f"database schema is at revision {found or 'none (empty database)'}, "
        f"the code needs {wanted}: run `parley db upgrade`"
    )


async def ensure_schema(
    url: str, auto_migrate: bool | None, *, timeout_s: float | None = None
) -> None:
    """Migrate, or only check, as `auto_migrate` says.

    None migrates an SQLite file (it belongs to this bot alone) but only checks a server
    database, whose migrations an operator should run deliberately, once, for all workers.
    """
    migrate = auto_migrate
    if migrate is None:
        migrate = make_url(url).get_backend_name() == "sqlite"
    if migrate:
        await upgrade(url, timeout_s=timeout_s)
    else:
        await check_schema(url, timeout_s=timeout_s)


async def _run_command(
    func: Callable[[Config, str], None], url: str, revision: str, timeout_s: float | None
) -> None:
    # Alembic itself would fail on a revision it cannot find with a traceback, or one line
    # that does not say why ("Can't locate revision"). `timeout_s` bounds that first look
    # (a server that never answers), not the migration.
    _refuse_unknown(await current(url, timeout_s))
    try:
        await asyncio.to_thread(func, alembic_config(url), revision)
    except database_errors(url) as exc:
        raise database_error(exc, url) from exc


def _current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _refuse_unknown(found: str | None) -> None:
    """Raise SchemaTooNew when the database is at a revision this code does not have."""
    script = ScriptDirectory.from_config(alembic_config(""))
    if found is not None and not any(rev.revision == found for rev in script.walk_revisions()):
        raise SchemaTooNew(
            f"database schema is at revision {found}, which this code does not know: "
            "it was migrated by a newer version of Parley"
        )
