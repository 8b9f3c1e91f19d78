"""The Alembic revisions against real SQLite and PostgreSQL: they run both ways, and they build
exactly the schema that bot/storage/models.py describes."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine
from telegram import Update

import adapters.support.models  # noqa: F401  (its tables join Base.metadata, as in env.py)
import bot.handoff.models  # noqa: F401  (the same)
from adapters.telegram.translate import to_incoming
from bot.errors import SchemaOutOfDate, StorageError
from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.models import Base, include_in_schema_compare

TABLES = {"users", "conversations", "messages", "kb_documents", "kb_chunks"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/db/parley.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _schema_diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "compare_server_default": True,
            "include_object": include_in_schema_compare,
        },
    )
    return list(compare_metadata(context, Base.metadata))


async def _inspect(url: str) -> tuple[set[str], list[Any]]:
    """The tables present, and how they differ from the models."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            diff = await conn.run_sync(_schema_diff) if tables >= TABLES else []
    finally:
        await engine.dispose()
    return tables, diff


async def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    await migrate.upgrade(db_url)
    assert await migrate.current(db_url) == migrate.head()
    await migrate.downgrade(db_url, "base")
    assert await migrate.current(db_url) is None
    tables, _ = await _inspect(db_url)
    assert not tables & TABLES
    await migrate.upgrade(db_url)
    assert await migrate.current(db_url) == migrate.head()


async def test_migrated_schema_matches_models(db_url: str) -> None:
    await migrate.upgrade(db_url)
    tables, diff = await _inspect(db_url)
    assert tables >= TABLES
    assert diff == []


async def test_check_schema_passes_at_head(db_url: str) -> None:
    await migrate.upgrade(db_url)
    await migrate.check_schema(db_url)
    await migrate.ensure_schema(db_url, auto_migrate=False)


@pytest.mark.postgres
async def test_check_schema_on_empty_postgres_says_how_to_fix(postgres_url: str) -> None:
    with pytest.raises(SchemaOutOfDate) as caught:
        await migrate.check_schema(postgres_url)
    assert "parley db upgrade" in str(caught.value)
    assert migrate.head() in str(caught.value)
    # None only checks a server database: it must not migrate behind the operator's back.
    with pytest.raises(SchemaOutOfDate):
        await migrate.ensure_schema(postgres_url, auto_migrate=None)
    assert await migrate.current(postgres_url) is None


@pytest.mark.postgres
async def test_ensure_schema_true_migrates_postgres(postgres_url: str) -> None:
    await migrate.ensure_schema(postgres_url, auto_migrate=True)
    assert await migrate.current(postgres_url) == migrate.head()


async def test_ensure_schema_none_migrates_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/new/folder/parley.db"
    await migrate.ensure_schema(url, auto_migrate=None)
    assert await migrate.current(url) == migrate.head()
    tables, diff = await _inspect(url)
    assert tables >= TABLES and diff == []


async def test_an_sqlite_file_leaves_its_migration_in_wal_mode(tmp_path: Path) -> None:
    """WAL is set by the migration, under its lock, not by the first connection of each
    worker: two workers starting together on a new file each tried to convert it, one of
    them perhaps while the other held a lock, which the conversion cannot wait out (the
    suspected cause of a "database is locked" in tests/test_ops_sample_race.py, once in a CI
    run). A file already at the head revision in the old journal mode is converted too."""
    path = tmp_path / "parley.db"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate.upgrade(url)
    assert _journal_mode(path) == "wal"

    with sqlite3.connect(path) as plain:
        plain.execute("PRAGMA journal_mode=DELETE")
    assert _journal_mode(path) == "delete"
    await migrate.ensure_schema(url, auto_migrate=None)
    assert _journal_mode(path) == "wal"


def _journal_mode(path: Path) -> str:
    plain = sqlite3.connect(path)
    try:
        return str(plain.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        plain.close()


async def test_ensure_schema_false_only_checks_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    with pytest.raises(SchemaOutOfDate):
        await migrate.ensure_schema(url, auto_migrate=False)


async def test_unreachable_server_raises_storage_error_without_password() -> None:
    url = "postgresql+asyncpg://parley:s3cret-pw@127.0.0.1:1/parley"
    for attempt in (migrate.check_schema(url), migrate.upgrade(url)):
        with pytest.raises(StorageError) as caught:
            await attempt
        assert "s3cret-pw" not in str(caught.value)


@pytest.mark.postgres
async def test_rejected_login_raises_storage_error(postgres_url: str) -> None:
    url = postgres_url.replace("://postgres@", "://no_such_role:s3cret-pw@", 1)
    for attempt in (migrate.check_schema(url), migrate.upgrade(url)):
        with pytest.raises(StorageError) as caught:
            await attempt
        assert "s3cret-pw" not in str(caught.value)


async def test_database_from_newer_code_is_refused(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    finally:
        await engine.dispose()
    with pytest.raises(StorageError, match="newer version") as caught:
        await migrate.check_schema(url)
    assert not isinstance(caught.value, SchemaOutOfDate)


async def test_telegram_keys_recorded_by_update_id_become_chat_and_message_keys(
    db_url: str,
) -> None:
    """0014: a message recorded as `telegram:<update_id>` gets the key the adapter now gives
    the same update, so its delivery again after the upgrade is still a duplicate."""
    payload = {
        "update_id": 7,
        "message": {
            "message_id": 1001,
            "date": 1_760_000_000,
            "chat": {"id": -100123, "type": "supergroup", "title": "Team"},
            "from": {"id": 42, "is_bot": False, "first_name": "Ada"},
            "text": "hello",
        },
    }
    message = Update.de_json(payload, None).message
    assert message is not None
    await migrate.upgrade(db_url, "0013")
    rows = [  # conversation, key, platform_message_id
        (1, "telegram:7", "1001"),
        (1, "telegram:8", None),  # no message id kept: left as it is
        (2, "discord:555", "555"),
        (2, "desk:telegram:9", None),
    ]
    engine = create_engine(db_url)
    try:
        await _messages_at_0013(engine, rows)
        await migrate.upgrade(db_url)
        async with engine.connect() as conn:
            keys = (
                await conn.execute(text("SELECT idempotency_key FROM messages ORDER BY id"))
            ).scalars()
            assert list(keys) == [
                to_incoming(message, "hello").idempotency_key,
                "telegram:8",
                "discord:555",
                "desk:telegram:9",
            ]
    finally:
        await engine.dispose()
    assert to_incoming(message, "hello").idempotency_key == "telegram:-100123:1001"


# Each committed revision's contents (sha256, first 16 hex digits). A revision that a
# database may already be at is never edited: 0004 and 0013 were, and databases migrated
# before the edit lacked their new columns for good (0015 repairs them). A change goes in a
# new revision, whose line is added here.
COMMITTED = {
    "0001_initial.py": "d7353113a835a52d",
    "0002_knowledge_base.py": "1001b5bf48264a39",
    "0003_preferences.py": "5ade08614b04421f",
    "0004_platform_fields.py": "7ccafd4e0b87950f",
    "0005_summary_tokens.py": "d71d13e617ff5019",
    "0006_kb_embeddings.py": "d7ac20112813ba94",
    "0007_message_attempts.py": "84d9b8e057e80c6a",
    "0008_turn_fence.py": "b1ddbf0524a50451",
    "0009_support_sites.py": "09a3cdb4341e7a83",
    "0010_token_usage.py": "822c012ac0cfc92c",
    "0011_handoff.py": "3fdd9098bf624330",
    "0012_kb_sample.py": "f46d4c61a6bfa2e2",
    "0013_handoff_trigger.py": "7922ab7ee61a06bf",
    "0014_telegram_message_keys.py": "847c2b8a25fe7cf5",
    "0015_repair_edited_revisions.py": "8167071b0f230286",
    "0016_redaction_count.py": "e50a7ff2ad9fe995",
    "0017_messages_user_index.py": "daf2bac45cba5422",
    "0018_message_age_index.py": "67c90529c1f3b0d3",
    "0019_shared_conversations.py": "e0c872b49a699cfc",
    "0020_handoff_request_claim.py": "0f9dd87f0b3dc6ad",
    "0021_message_edited_at.py": "2af1f159b5ada85a",
    "0022_handoff_desk_updated_at.py": "5f610586ea6d5a71",
}


def test_committed_revisions_are_never_edited() -> None:
    found = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        for path in sorted((migrate.MIGRATIONS_DIR / "versions").glob("0*.py"))
    }
    assert found == COMMITTED


async def test_columns_added_to_revisions_after_they_were_committed_are_added_now(
    db_url: str,
) -> None:
    """A database migrated by a59eb42 (0004 without the lease columns) and 81d7a00 (0013
    without request_delivered) was at 0013 yet lacked three columns: every turn failed on
    "no such column" while `db upgrade` and `doctor` said all was well (a review)."""
    await migrate.upgrade(db_url, "0014")
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            for table, column in (
                ("conversations", "lease_owner"),
                ("conversations", "lease_until"),
                ("handoff_states", "request_delivered"),
            ):
                await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            await conn.execute(
                text("INSERT INTO conversations (platform, chat_id) VALUES ('console', 'a')")
            )
    finally:
        await engine.dispose()
    await migrate.upgrade(db_url)
    tables, diff = await _inspect(db_url)
    assert tables >= TABLES and diff == []
    await migrate.downgrade(db_url, "0014")  # 0015 changes nothing going down
    await migrate.upgrade(db_url)
    assert (await _inspect(db_url))[1] == []


@pytest.mark.parametrize(
    "keys",
    [
        ["telegram:-100123:1001", "telegram:7"],  # recorded again after a downgrade
        ["telegram:7", "telegram:9"],  # twice by update_id
    ],
    ids=["new-and-old", "old-twice"],
)
async def test_a_telegram_message_recorded_twice_does_not_stop_the_upgrade(
    db_url: str, keys: list[str]
) -> None:
    """0014 rewrote every old key: a message recorded under both forms, or twice under the
    old one, made the rewrite clash with the unique key and the upgrade stop, and an SQLite
    bot migrates at start: it no longer started (the review of this session's commits)."""
    await migrate.upgrade(db_url, "0013")
    engine = create_engine(db_url)
    try:
        await _messages_at_0013(engine, [(1, key, "1001") for key in keys])
        await migrate.upgrade(db_url)
        async with engine.connect() as conn:
            found = (
                await conn.execute(text("SELECT idempotency_key FROM messages ORDER BY id"))
            ).scalars()
            assert "telegram:-100123:1001" in list(found)
    finally:
        await engine.dispose()
    assert await migrate.current(db_url) == migrate.head()


async def _messages_at_0013(engine: AsyncEngine, rows: list[tuple[int, str, str | None]]) -> None:
    """Telegram conversation 1 (chat -100123) and Discord conversation 2, and `rows`:
    (conversation, idempotency key, platform message id)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO conversations (id, platform, chat_id) VALUES "
                "(1, 'telegram', '-100123'), (2, 'discord', '77')"
            )
        )
        for conversation, key, platform_id in rows:
            await conn.execute(
                text(
                    "INSERT INTO messages (conversation_id, role, kind, content, "
                    "idempotency_key, platform_message_id) "
                    "VALUES (:c, 'user', 'chat', 'x', :k, :p)"
                ),
                {"c": conversation, "k": key, "p": platform_id},
            )


async def test_a_users_messages_are_found_through_an_index(db_url: str) -> None:
    """Erasing a user deletes their users row, whose foreign key's ON DELETE SET NULL looks
    for their messages (`user_id = ?`, across every conversation); the summarize skill's
    last_seen_id looks for their last message in a conversation. Both read the whole table,
    or the whole conversation, before migration 0017: user_id was a filter, never an index's
    condition. (PostgreSQL with sequential scans off, so that the plan on a small table is
    the one a large table would get.)"""
    from bot.storage.sql_store import _LAST_SEEN

    await migrate.upgrade(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            last_seen = _LAST_SEEN.params(cid=1, uid=1, before=100).compile(
                dialect=conn.dialect, compile_kwargs={"literal_binds": True}
            )
            statements = {
                "the foreign key's action": "UPDATE messages SET user_id = NULL WHERE user_id = 1",
                "last_seen_id": str(last_seen),
            }
            for name, sql in statements.items():
                if conn.dialect.name == "sqlite":
                    found = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
                    plan = [str(row[-1]) for row in found]
                    searched = [line for line in plan if "user_id=?" in line]
                    assert searched and not any(line.startswith("SCAN") for line in plan), (
                        name,
                        plan,
                    )
                else:
                    await conn.exec_driver_sql("SET enable_seqscan = off")
                    plan = [str(row[0]) for row in await conn.exec_driver_sql(f"EXPLAIN {sql}")]
                    cond = [line for line in plan if "Index Cond" in line and "user_id" in line]
                    filtered = [line for line in plan if "Filter" in line and "user_id" in line]
                    assert cond and not filtered, (name, plan)
    finally:
        await engine.dispose()


# --- `alembic` by hand: migrations/env.py's engine is Parley's, with its guards ---------------


def _alembic(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`alembic ARGS upgrade head` with the repository's alembic.ini, in a process of its own:
    (exit status, stdout, stderr)."""
    import subprocess
    import sys

    from tests.processes import ROOT, parley_env

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(ROOT / "alembic.ini"),
            *args,
            "upgrade",
            "head",
        ],
        cwd=tmp_path,
        env=parley_env(tmp_path, env or {}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def _failed_in_one_line(outcome: tuple[int, str, str], said: str) -> None:
    """Alembic's own failure of a command: `FAILED: <line>` on stdout, the line logged on
    stderr (alembic.ini's logging), a non-zero exit status, no traceback."""
    status, out, err = outcome
    assert status != 0
    assert out == f"FAILED: {said}\n", out + err
    assert err == f"ERROR [alembic.util.messaging] {said}\n", err


@pytest.mark.parametrize(
    ("url", "said"),
    [
        # A database that is down: asyncpg's refused connection.
        (
            "postgresql+asyncpg://parley:s3cret-pw@127.0.0.1:1/parley",
            "database error: ConnectionRefusedError: [Errno 111] Connect call failed "
            "('127.0.0.1', 1)",
        ),
        # Parameters the driver cannot take: checked as database.url is.
        (
            "sqlite+aiosqlite:///{folder}/parley.db?timeout=s3cret-pw",
            "-x url: timeout: not a number of seconds from 0 to 2147483",
        ),
        (
            "postgresql://parley:s3cret-pw@127.0.0.1:1/parley?sslmod=require",
            "-x url: sslmod: not a URL parameter asyncpg takes; it takes command_timeout, "
            "database, gsslib, host, krbsrvname, passfile, password, port, "
            "prepared_statement_cache_size, service, servicefile, ssl, target_session_attrs, user",
        ),
        (
            "mysql://parley:s3cret-pw@db/parley",
            "-x url: mysql is not supported; use "
            "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB",
        ),
    ],
)
def test_alembic_by_hand_with_a_bad_url_or_a_database_down_fails_in_one_line(
    tmp_path: Path, url: str, said: str
) -> None:
    """migrations/env.py made its own engine, without Parley's guards: each of these printed
    a traceback of 40 to 100 lines, some with the URL's text."""
    outcome = _alembic(tmp_path, "-x", f"url={url.format(folder=tmp_path)}")
    _failed_in_one_line(outcome, said)
    assert "s3cret-pw" not in outcome[1] + outcome[2]


def test_alembic_by_hand_with_a_setting_parley_refuses_fails_in_one_line(tmp_path: Path) -> None:
    """Without -x url, the URL is Parley's setting: its refusal was a ConfigError traceback."""
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db?foo=1"
    outcome = _alembic(tmp_path, env={"PARLEY_DATABASE__URL": url})
    said = "invalid setting PARLEY_DATABASE__URL: foo: not a URL parameter SQLite takes"
    status, out, err = outcome
    assert status != 0 and out.startswith(f"FAILED: {said}") and out.count("\n") == 1, out
    assert err.startswith(f"ERROR [alembic.util.messaging] {said}") and err.count("\n") == 1


@pytest.mark.parametrize("given", ["-x", "settings"])
def test_alembic_by_hand_still_migrates(tmp_path: Path, given: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/db/parley.db"
    if given == "-x":
        status, _, err = _alembic(tmp_path, "-x", f"url={url}")
    else:
        status, _, err = _alembic(tmp_path, env={"PARLEY_DATABASE__URL": url})
    assert status == 0, err
    assert f" -> {migrate.head()}, " in err  # up to the newest revision


def test_db_upgrade_with_an_sqlite_parameter_the_settings_missed_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parley db upgrade` reads the schema's revision on an engine of its own
    (migrate.current): it is Parley's one-off engine, whose guards refuse a parameter the
    settings did not see (here changed after they loaded) in one line, exit 2, instead of
    SQLAlchemy's ValueError traceback."""
    from pydantic import SecretStr

    from bot.cli import main
    from bot.settings import Settings, load_settings

    def loaded(config_file: Path | None = None, **overrides: object) -> Settings:
        settings = load_settings(config_file, **overrides)
        bad = f"sqlite+aiosqlite:///{tmp_path}/parley.db?timeout=s3cret-pw"
        settings.database.url = SecretStr(bad)
        return settings

    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("bot.settings.load_settings", loaded)
    assert main(["db", "upgrade"]) == 2
    assert capsys.readouterr().err == (
        "parley: error: database.url: timeout: not a number of seconds from 0 to 2147483\n"
    )


def test_db_upgrade_to_a_revision_the_database_is_past_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parley db upgrade 0005` on a database at the newest revision did nothing and exited
    0, as if the database were now at 0005 (an operator going back to an older Parley runs
    it so). It names the revision the database is at and the command that goes back."""
    from bot.cli import main

    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/parley.db")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["db", "upgrade", "0005"]) == 2
    assert capsys.readouterr().err == (
        f"parley: error: db upgrade: the database is at revision {migrate.head()}, past 0005: "
        "`parley db downgrade 0005 --yes` goes back to it (back up the database first)\n"
    )
    assert main(["db", "upgrade", migrate.head()]) == 0  # where it is: nothing to do
