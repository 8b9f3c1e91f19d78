"""`parley doctor`: one line per check, and a clear line for each problem found."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import TextIO

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import adapters.support.models  # noqa: F401  (its tables join Base.metadata: the write check)
import bot.handoff.models  # noqa: F401  (its tables, as in migrations/env.py)
from adapters.kit.http import listening_socket
from adapters.kit.runner import listen_addresses
from backends.base import Backend
from backends.factory import build_backend, build_plain_backend, fallback_settings
from bot import documents, health
from bot.adapter_registry import AdapterSettings, adapter_spec
from bot.app import history_room
from bot.errors import AdapterError, BotError, ConfigError, SchemaOutOfDate, StorageError
from bot.logsafety import redactor
from bot.metrics import multiprocess_problem
from bot.settings import Settings
from bot.storage import migrate, prefs_models  # noqa: F401  (prefs_models: its tables)
from bot.storage.cache import RedisRefused, build_cache
from bot.storage.database import (
    cannot_create,
    create_engine,
    database_errors,
    describe_error,
    sqlite_file,
)
from bot.storage.models import Base
from bot.storage.sql_store import SqlStore

_Report = Callable[[bool, str], None]

# How long a check waits for the database's first answer: a server behind a firewall that
# drops packets would otherwise hold doctor for the driver's own limit (asyncpg: 60 s).
CONNECT_WAIT_S = 10.0


async def run_checks(settings: Settings, *, out: TextIO) -> list[str]:
    problems: list[str] = []
    safety = redactor(settings)  # a check's error may quote a URL with its password

    def report(ok: bool, line: str) -> None:
        line = safety.redact(line)
        out.write(f"[{'ok' if ok else 'PROBLEM'}] {line}\n")
        if not ok:
            problems.append(line)

    await _check_database(settings, report)
    await _check_cache(settings, report)
    await _check_backend(settings, report)
    await _check_adapters(settings, report)
    _check_listening(settings, report)
    _check_memory_limit(settings, report)
    problem = multiprocess_problem()
    if problem:
        report(False, f"metrics: {problem}")
    out.write("no problems found\n" if not problems else f"{len(problems)} problem(s) found\n")
    return problems


async def _check_database(settings: Settings, report: _Report) -> None:
    url = settings.database.url.get_secret_value()
    kind = "PostgreSQL"
    if settings.database.is_sqlite:  # the path is no secret, and says where the history is
        kind = f"SQLite {make_url(url).database}"
        path = sqlite_file(make_url(url))
        try:
            missing = path is not None and not path.exists()
            blocked = cannot_create(path) if path is not None and missing else ""
        except OSError as exc:  # a folder on the way this user may not search
            report(False, f"database: {kind} cannot be reached: {exc.strerror}")
            return
        if path is not None and missing:
            # A check creates nothing: opening it would make the file (and its folder), and
            # a mistyped path would then pass. `parley run` creates it, where it can.
            if blocked:
                report(False, f"database: {kind} cannot be created: {blocked}")
                return
            where = "" if path.parent.is_dir() else ", with its folder"
            report(True, f"database: {kind} does not exist yet; parley run creates it{where}")
            return
    engine = create_engine(url)
    try:
        try:
            async with asyncio.timeout(CONNECT_WAIT_S):
                await SqlStore(engine).ping()
        except TimeoutError:
            report(False, f"database: {kind} did not answer within {CONNECT_WAIT_S:g} s")
            return
        report(True, f"database: {kind} reachable")
        wrong = _sqlite_write_problem if settings.database.is_sqlite else _postgres_write_problem
        if problem := await wrong(engine, url):
            report(False, f"database: {kind} takes no writes: {problem}")
        try:
            await migrate.check_schema(url)
            report(True, f"database schema: at revision {migrate.head()}")
        except SchemaOutOfDate as exc:  # the one schema problem that migrating fixes
            db = settings.database
            auto = db.auto_migrate is True or (db.is_sqlite and db.auto_migrate is None)
            report(auto, f"database schema: {exc}" + (" (migrated on start)" if auto else ""))
        except BotError as exc:
            report(False, f"database schema: {exc}")
    except BotError as exc:
        report(False, f"database: {kind} not usable: {exc}")
    finally:
        await engine.dispose()


async def _sqlite_write_problem(engine: AsyncEngine, url: str) -> str:
    """Why the SQLite database takes no writes, "" when it does: a file or folder this user
    may not write, a read-only mount, `mode=ro`. Reads answer all the same, so the ping
    passed and `parley run` failed at its first write. The probe is a write of what is
    there already (the header's user_version), rolled back when the connection closes."""

    def probe(conn: Connection) -> None:
        version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # takes the write lock: waits for a writer
        conn.exec_driver_sql(f"PRAGMA user_version = {version}")

    try:
        async with asyncio.timeout(CONNECT_WAIT_S), engine.connect() as conn:
            await conn.run_sync(probe)
    except TimeoutError:
        return f"no write went through within {CONNECT_WAIT_S:g} s (another writer held it)"
    except database_errors(url) as exc:
        return describe_error(exc, url).removeprefix("database error: ")
    return ""


async def _postgres_write_problem(engine: AsyncEngine, url: str) -> str:
    """Why this PostgreSQL user cannot write Parley's tables, "" when it can: a role without
    the grants on the tables the migrating role made, a standby or a read-only default. The
    ping passed and `parley run` failed at its first write (permission denied)."""

    def probe(conn: Connection) -> str:
        if conn.execute(_READ_ONLY).scalar() == "on":
            return "the server is read-only (transaction_read_only: a standby?)"
        tables = sorted(Base.metadata.tables)
        found = conn.execute(
            _UNWRITABLE, {"tables": tables, "sequences": [f"{t}_id_seq" for t in tables]}
        )
        denied = [str(name) for (name,) in found]
        if not denied:
            return ""
        shown = ", ".join(denied[:4]) + (f" and {len(denied) - 4} more" if len(denied) > 4 else "")
        return (
            f"this user may not write {shown} (grant it SELECT, INSERT, UPDATE, DELETE on "
            "the tables and USAGE on the sequences)"
        )

    try:
        async with asyncio.timeout(CONNECT_WAIT_S), engine.connect() as conn:
            return await conn.run_sync(probe)
    except TimeoutError:
        return f"no answer within {CONNECT_WAIT_S:g} s"
    except database_errors(url) as exc:
        return describe_error(exc, url).removeprefix("database error: ")


_READ_ONLY = sa.text("SELECT current_setting('transaction_read_only')")
# Parley's tables and their id sequences (`<table>_id_seq`) that this user may not write (one
# privilege a call: has_table_privilege of a list is true when any of them is held).
_UNWRITABLE = sa.text(
    """
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND (
        (c.relkind IN ('r', 'p') AND c.relname = ANY(:tables)
         AND NOT (has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
                  AND has_table_privilege(c.oid, 'UPDATE')
                  AND has_table_privilege(c.oid, 'DELETE')))
        OR (c.relkind = 'S' AND c.relname = ANY(:sequences)
            AND NOT has_sequence_privilege(c.oid, 'USAGE')))
    ORDER BY c.relkind DESC, c.relname
    """
)


async def _check_cache(settings: Settings, report: _Report) -> None:
    if settings.redis.url is None:
        report(True, "cache: in-process (set PARLEY_REDIS__URL to share it across workers)")
        return
    cache = build_cache(settings.redis)
    try:
        await cache.ping()
        report(True, "cache: Redis reachable")
    except RedisRefused as exc:
        report(False, f"cache: {exc}")
    except StorageError as exc:
        report(False, f"cache: Redis not reachable: {exc}")
    finally:
        await cache.aclose()


async def _check_backend(settings: Settings, report: _Report) -> None:
    primary = build_backend(settings.backend)
    if primary is None:
        report(True, "backend: none configured (commands only; see docs/backends.md)")
        return
    await _check_one("backend", primary, settings, report)
    for n, fallback in enumerate(settings.backend.fallbacks, start=1):
        backend = build_plain_backend(fallback_settings(settings.backend, fallback))
        await _check_one(f"fallback {n}", backend, settings, report)


async def _check_one(label: str, backend: Backend, settings: Settings, report: _Report) -> None:
    try:
        await backend.start()
        caps = backend.capabilities
        exact = "model tokenizer" if caps.exact_token_counts else "estimated (no tokenizer)"
        report(
            True,
            f"{label}: {caps.name} model {caps.model!r}, "
            f"context {caps.max_model_len} tokens, token counts: {exact}",
        )
        (system,) = await backend.count_tokens([settings.conversation.system_prompt])
        try:  # what start-up computes: too little room stops it there
            room = history_room(settings, caps.max_model_len, system)
        except ConfigError as exc:
            report(False, f"{label}: {exc}; parley run stops on it")
            return
        wanted = settings.conversation.context_tokens
        if room < wanted:
            report(
                False,
                f"{label}: context length {caps.max_model_len} leaves the history {room} "
                f"tokens, less than conversation.context_tokens = {wanted}; "
                "the history budget will be capped",
            )
    except BotError as exc:
        report(False, f"{label}: {exc}")
    finally:
        await backend.aclose()


async def _check_adapters(settings: Settings, report: _Report) -> None:
    for name in settings.adapters:
        spec = adapter_spec(name)
        try:
            check = spec.load_doctor()
            if check is None:
                report(True, f"adapter {name}: nothing to check")
                continue
            arguments: tuple[object, ...] = (spec.section(settings),)
            if _takes_core_settings(check):
                arguments += (settings,)
            report(True, f"adapter {name}: {await check(*arguments)}")
        except BotError as exc:
            report(False, f"adapter {name}: {exc}")


def _check_listening(settings: Settings, report: _Report) -> None:
    """Each address `parley run` would listen on can be bound: a port another process holds
    failed the run at start ("cannot listen on ...: Address already in use", exit 3) while
    doctor found nothing. The socket is closed at once: doctor holds no port. Nothing is
    said where nothing listens (no adapter serving HTTP, no metrics port)."""
    try:
        serving = any(_serves_http(settings, name) for name in settings.adapters)
        addresses = listen_addresses(settings, serving)
    except ConfigError as exc:  # the metrics and HTTP ports in each other's way
        report(False, str(exc))
        return
    for section, host, port in addresses:
        try:
            listening_socket(host, port, section).close()
        except AdapterError as exc:  # run's own line
            if _a_worker_answers(section, host, port):
                report(True, f"{section}: {host}:{port} is served by a running worker (its "
                             "/healthz answers); another worker here could not listen")  # fmt: skip
            else:
                report(False, str(exc))
        else:
            report(True, f"{section}: can listen on {host}:{port}")


def _check_memory_limit(settings: Settings, report: _Report) -> None:
    """A document reader's cap (`documents.max_memory_mb`) below this process's memory limit
    (its cgroup: a container's, a systemd unit's MemoryMax): above it, the kernel ends a
    reader before its own cap refuses the document, and its user is asked to send it again
    however often they do. Nothing is said where no limit is set."""
    limit = documents.memory_limit()
    if limit is None:
        return
    cap, limit_mb = settings.documents.max_memory_mb, limit // 2**20
    if documents.cap_over_limit(cap, limit):
        report(False, f"documents: max_memory_mb ({cap}) is not below this process's memory "
                      f"limit ({limit_mb} MB, its cgroup): the kernel would end a document's "
                      "reader before its own cap refuses the document; set "
                      f"documents.max_memory_mb to at most {max(limit_mb // 4, 1)}")  # fmt: skip
    else:
        report(True, f"documents: a reader's cap ({cap} MB) is below the memory limit "
                     f"({limit_mb} MB)")  # fmt: skip


def _a_worker_answers(section: str, host: str, port: int) -> bool:
    """Whether what holds host:port is a running Parley worker: its `/healthz` answers `ok`
    (as `parley health` asks it). Doctor is run beside a worker too, where the port is taken
    by that worker, which is no problem."""
    try:
        url = health.healthz_at(section, host, str(port))
    except ValueError:  # no URL can be made of it
        return False
    return health.worker_answers(url)


def _serves_http(settings: Settings, name: str) -> bool:
    # Settings made without the adapters' sections (`Settings()`, not load_settings: a
    # program's own) have none to ask.
    section = getattr(settings, name, None)
    return isinstance(section, AdapterSettings) and section.serves_http()


def _takes_core_settings(check: Callable[..., object]) -> bool:
    """Whether an adapter's doctor hook takes a second argument, the whole Settings: a check
    that depends on the core's (the support adapter's token secret matters once PostgreSQL
    or Redis let several workers serve). Hooks taking only their section are called so."""
    try:
        parameters = list(inspect.signature(check).parameters.values())
    except (TypeError, ValueError):  # no signature to read: called the documented way
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters) >= 2
