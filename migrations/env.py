"""Alembic environment: async engines, SQLite and PostgreSQL.

Run from code by bot.storage.migrate (the URL arrives in `config.attributes`), or by hand with
`alembic upgrade head`, which takes the URL from `-x url=...` or else from Parley's settings
(PARLEY_DATABASE__URL, config/parley.toml). The URL is never written to the log.

The engine is Parley's (bot.storage.database.create_oneoff_engine), with its guards. Run by
hand, a URL the settings refuse, one whose parameters the driver refuses and a database that
cannot be reached are each one line (Alembic's `FAILED: ...`, exit status 255), not a
traceback; run from code, they are raised to the caller (`parley db upgrade` reports them).
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.util import CommandError
from pydantic import ValidationError
from sqlalchemy import Connection, event, inspect, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

import adapters.support.models  # noqa: F401  (the support channel's sites and keys)
import bot.handoff.models  # noqa: F401  (handoff states, their audit trail, message signals)
from bot.errors import ConfigError, StorageError
from bot.settings import DatabaseSettings
from bot.storage import prefs_models  # noqa: F401  (its tables join Base.metadata)
from bot.storage.database import (
    SQLITE_FILE_PRAGMAS,
    create_oneoff_engine,
    database_errors,
    describe_error,
    set_sqlite_pragmas,
    sqlite_file,
    sqlite_pragmas,
)
from bot.storage.models import Base, include_in_schema_compare

config = context.config
target_metadata = Base.metadata
# The key of the PostgreSQL advisory lock that lets one process at a time migrate a database
# (any fixed number; advisory locks are per database).
MIGRATION_LOCK_KEY = 0x7061726C6579  # "parley"
# The name of the copy of a table that Alembic's batch mode makes on SQLite.
LEFTOVER_PREFIX = "_alembic_tmp_"

# Run by hand, alembic.ini sets up logging; run from code, the application's logging stands.
if config.config_file_name is not None and "url" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    if config.attributes.get("url"):  # from code: Parley's settings took it
        return str(config.attributes["url"])
    given = context.get_x_argument(as_dictionary=True).get("url")
    if not given:
        from bot.settings import load_settings  # only when run by hand

        return load_settings().database.url.get_secret_value()
    # Checked as database.url is (postgres:// means postgresql+asyncpg://, sslmode is asyncpg's
    # ssl, parameters the driver cannot take are refused), in one line without the URL.
    try:
        return DatabaseSettings(url=given).url.get_secret_value()  # type: ignore[arg-type]
    except ValidationError as exc:
        said = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
        raise ConfigError(f"-x url: {said}") from None


def configure(*, is_sqlite: bool, **kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=is_sqlite,
        compare_type=True,
        # Autogenerate must not try to drop the raw-SQL full-text objects of revision 0002.
        include_object=include_in_schema_compare,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = database_url()
    configure(url=url, literal_binds=True, is_sqlite=make_url(url).get_backend_name() == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def drop_leftover_copies(connection: Connection) -> None:
    """The `_alembic_tmp_<table>` copies that an SQLite revision interrupted before its DDL was
    transactional left behind, where their table is still there (the copy is then a partial
    one); without this no upgrade gets past that revision."""
    tables = set(inspect(connection).get_table_names())
    for name in sorted(tables):
        if name.startswith(LEFTOVER_PREFIX) and name.removeprefix(LEFTOVER_PREFIX) in tables:
            connection.exec_driver_sql(f'DROP TABLE "{name}"')


def do_run_migrations(connection: Connection) -> None:
    configure(connection=connection, is_sqlite=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "sqlite":
            drop_leftover_copies(connection)
        if connection.dialect.name == "postgresql":
            # Workers started at once would each find the schema behind and run the same
            # revisions (all but one failing on "already exists"): the others wait here, then
            # read the revision the first one committed and have nothing left to do.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


@contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """One process at a time migrates an SQLite file: concurrent runs would each find the
    schema behind and run the same revisions; a lock on a file beside the database (released
    when its holder exits, whatever the way) queues them."""
    parsed = make_url(url)
    path = sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is None:  # in memory: no other process can see it
        yield
        return
    with open(f"{path}.migration-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def transactional_sqlite_ddl(engine: AsyncEngine) -> None:
    """SQLite's DDL in the migration's transaction, as PostgreSQL's is. Python's sqlite3
    begins a transaction before INSERT or UPDATE only, so each CREATE, DROP and table copy
    of a batch operation took effect alone: a disk that filled during a copy left a half-done
    revision (`_alembic_tmp_<table>` behind) that no later upgrade could get past. With the
    driver's own transaction handling off and BEGIN sent at each begin (the recipe in
    SQLAlchemy's SQLite dialect documentation), a revision that fails is rolled back whole.

    A file is put in WAL mode here, before the migration's transaction (the mode cannot change
    inside one), under the migration lock: bot.storage.database.SQLITE_FILE_PRAGMAS."""
    pragmas = sqlite_pragmas(engine.url, SQLITE_FILE_PRAGMAS) if sqlite_file(engine.url) else ()

    def no_driver_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        set_sqlite_pragmas(dbapi_connection, pragmas)

    def begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    event.listen(engine.sync_engine, "connect", no_driver_transactions)
    event.listen(engine.sync_engine, "begin", begin)


async def run_async_migrations() -> None:
    url = database_url()
    # A one-off connection, nothing left open once the command returns.
    engine = create_oneoff_engine(url)
    if engine.dialect.name == "sqlite":
        transactional_sqlite_ddl(engine)
    try:
        with sqlite_lock(url):
            async with engine.connect() as connection:
                await connection.run_sync(do_run_migrations)
    except database_errors(url) as exc:
        raise StorageError(describe_error(exc, url)) from exc
    finally:
        await engine.dispose()


def run_migrations() -> None:
    if context.is_offline_mode():
        run_migrations_offline()
    else:
        asyncio.run(run_async_migrations())


if "url" in config.attributes:  # from code: bot.storage.migrate reports what fails
    run_migrations()
else:
    try:
        run_migrations()
    except (ConfigError, StorageError) as exc:
        # Alembic's own way to fail a command: `FAILED: <line>`, no traceback (unless
        # `alembic --raiseerr`).
        raise CommandError(str(exc)) from exc
