"""The bodies of the `parley` subcommands (argument parsing lives in bot.cli)."""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import re
import sys
from datetime import timedelta

from alembic.util import CommandError
from sqlalchemy.engine import make_url

from adapters.console import ConsoleSettings
from adapters.kit.runner import HARD_STOP_EXTRA_S, run_adapters
from bot.adapter_registry import adapter_spec, installed_adapters
from bot.app import Parley
from bot.errors import ConfigError
from bot.knowledge import load_sample_if_empty
from bot.logsafety import is_secret_parameter, redactor
from bot.settings import MAX_RETENTION_DAYS, Settings
from bot.storage import migrate
from bot.storage.database import cannot_create, create_engine, sqlite_file
from bot.storage.sql_store import SqlStore
from bot.types import utcnow


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.adapters:  # e.g. PARLEY_ADAPTERS= from an unset variable: it would exit 0
        installed = ", ".join(installed_adapters())
        raise ConfigError(f"adapters: none configured, nothing to run; installed: {installed}")
    for name in settings.adapters:  # before anything is opened or created
        if (problem := adapter_spec(name).section(settings).missing()) is not None:
            raise ConfigError(problem)
    async with Parley(settings) as app:
        await _load_sample(app)
        settle_heap()
        await run_adapters(app, settings.adapters, hard_stop_s=_hard_stop_s(settings))
    return 0


async def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    configured = adapter_spec("console").section(settings)
    chosen = {"user": args.user, "chat": args.chat}
    console = configured.model_copy(update={k: v for k, v in chosen.items() if v})
    assert isinstance(console, ConsoleSettings)
    async with Parley(settings) as app:
        await _load_sample(app)
        settle_heap()
        await run_adapters(
            app, ["console"], {"console": console}, hard_stop_s=_hard_stop_s(settings)
        )
    return 0


def _hard_stop_s(settings: Settings) -> float:
    """A stop signal ends this process this long after it whatever hangs (a database that
    never answers): the grace, and time for the clean-up after it."""
    return settings.shutdown_grace_s + HARD_STOP_EXTRA_S


def settle_heap() -> None:
    """Move what start-up loaded (language and sentiment models, lexicons, tokenizers, the
    sample knowledge base: about 190,000 objects) out of the garbage collector's reach. A full
    collection walks every tracked object with the event loop stopped: about 90 ms for that
    heap, a stall of every conversation at once; after `gc.freeze()` it walks only what was
    made since. The `parley` process owns its heap; a program that embeds `Parley` decides
    for itself. At exit the heap is given back to the collector: objects frozen then are
    never freed, and nanobind (torch's triton) printed about 30 "leaked" lines at each exit."""
    gc.collect()
    gc.freeze()
    atexit.register(gc.unfreeze)


async def _load_sample(app: Parley) -> None:
    if app.settings.database.is_sqlite:  # the embedded default answers questions about itself
        await load_sample_if_empty(app.kb, app.settings.knowledge)


async def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "prune":
        return await _prune(settings, args)
    if args.older_than is not None or args.dry_run:
        raise ConfigError(f"db {args.action}: --older-than and --dry-run are for db prune only")
    if args.action == "current" and (args.revision is not None or args.yes):
        raise ConfigError(
            "db current: takes no revision and no --yes (`parley db upgrade REV` or "
            "`parley db downgrade REV --yes` move to one)"
        )
    url = settings.database.url.get_secret_value()
    wait = settings.database.timeout_s  # for the first look only, not the migration
    try:
        if args.action == "upgrade":
            revision = args.revision or "head"
            if (past := await migrate.past(url, revision, timeout_s=wait)) is not None:
                raise ConfigError(
                    f"db upgrade: the database is at revision {past}, past {revision}: "
                    f"`parley db downgrade {revision} --yes` goes back to it (back up the "
                    "database first)"
                )
            await migrate.upgrade(url, revision, timeout_s=wait)
        elif args.action == "downgrade":
            revision = args.revision or "-1"
            if not args.yes:  # a downgrade drops what the revisions it undoes created
                target = "one revision" if revision == "-1" else f"to {revision}"
                raise ConfigError(
                    f"db downgrade: going back {target} removes the tables and columns of "
                    "each revision it undoes, with their data; back up the database "
                    '(docs/database.md, "Backups"), then run it again with --yes'
                )
            await migrate.downgrade(url, revision, timeout_s=wait)
    except CommandError as exc:  # a revision Alembic cannot find or reach
        # Alembic's line alone ("Can't locate revision identified by 'zz'") named no
        # revision that would do.
        raise ConfigError(
            f"db {args.action}: {_first_line(exc)}; this Parley's revisions run from "
            f"{migrate.first()} to {migrate.head()} (`parley db current` shows the database's)"
        ) from None
    missing = _missing_sqlite_file(settings) if args.action == "current" else None
    if missing is not None:
        # `current` only reads: opening the file would make it, empty (and its folder), and
        # a mistyped path would then look like a database with no schema (as `doctor`).
        print(f"schema revision: none (no database at {missing} yet) (code: {migrate.head()})")
        return 0
    found = await migrate.current(url, wait)
    print(f"schema revision: {found or 'none'} (code: {migrate.head()})")
    return 0


def _missing_sqlite_file(settings: Settings) -> str | None:
    """The SQLite file the settings name when it does not exist yet and could be made; None
    otherwise (PostgreSQL, in memory, there, or one that cannot be made: opening it says why)."""
    if not settings.database.is_sqlite:
        return None
    path = sqlite_file(make_url(settings.database.url.get_secret_value()))
    try:
        if path is None or path.exists() or cannot_create(path):
            return None
    except OSError:  # a folder on the way this user may not search: opening it says so
        return None
    return str(path)


async def _prune(settings: Settings, args: argparse.Namespace) -> int:
    """`parley db prune`: the retention policy once (a running worker applies it every
    conversation.retention_interval_s). One line with the count, never a message's text."""
    if args.revision is not None or args.yes:
        raise ConfigError("db prune: takes only --older-than DAYS and --dry-run")
    days = _prune_days(args.older_than, settings.conversation.retention_days)
    db = settings.database
    url = db.url.get_secret_value()
    await migrate.ensure_schema(url, db.auto_migrate, timeout_s=db.timeout_s)
    store = SqlStore(create_engine(url, echo=db.echo, pool_size=1))
    before = utcnow() - timedelta(days=days)
    try:
        pruned = await store.prune(before, dry_run=args.dry_run)
    finally:
        await store.aclose()
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{verb} {pruned.count} message(s) older than {days} day(s) "
          f"(created before {before:%Y-%m-%d %H:%M} UTC)")  # fmt: skip
    return 0


def _prune_days(given: str | None, setting: int) -> int:
    if given is None:
        if setting == 0:
            raise ConfigError(
                "db prune: how old? give --older-than DAYS, or set conversation.retention_days "
                "(0, the default, keeps every message)"
            )
        return setting
    try:
        days = int(given)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise ConfigError(
            f"db prune: --older-than takes a whole number of days from 1 to {MAX_RETENTION_DAYS}"
        )
    return days


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from bot.doctor import run_checks

    problems = await run_checks(settings, out=sys.stdout)
    return 1 if problems else 0


async def cmd_health(settings: Settings, args: argparse.Namespace) -> int:
    """`python -m bot.health`, the container's check, from the `parley` command: asked where
    the settings as loaded say (the environment, `.env` and the config file; the module reads
    only the first and the last, to stay light), or a worker configured in `.env` was
    reported down while it answered."""
    from bot.health import ask, url_of
    from bot.logformat import command_line

    m, h = settings.metrics, settings.http
    json_format = settings.log_format == "json"
    try:
        url = url_of((m.host, str(m.port)), (h.host, str(h.port)))
    except ValueError as exc:
        print(command_line(f"parley: {exc}", json_format=json_format), file=sys.stderr)
        return 2
    return ask(url, json_format=json_format)


async def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """The settings in effect, every secret "**********"; but the database's and Redis's URLs,
    which say where Parley keeps its data, are shown with their passwords (and any
    secret-looking query value) masked. The redactor masks what is left (a model server's
    http://user:password@host); the two URLs are put in after it, since the whole of a secret
    URL is a secret to it."""
    dumped = settings.model_dump(mode="json")
    shown = {
        "database": settings.database.url.get_secret_value(),
        "redis": settings.redis.url.get_secret_value() if settings.redis.url else None,
    }
    for section, url in shown.items():
        if url is not None:
            dumped[section]["url"] = f"\x00{section}\x00"
    text = redactor(settings).redact(json.dumps(dumped, indent=2))
    for section, url in shown.items():
        if url is not None:
            text = text.replace(json.dumps(f"\x00{section}\x00"), json.dumps(_masked_url(url)))
    print(text)
    return 0


# scheme://user:password@ as SQLAlchemy reads it (a user has no ":" or "/"; a password is
# anything up to the last "@"), so that a password with "/", "#" or "?" is masked whole.
_URL_PASSWORD = re.compile(r"^(?P<head>[\w+.-]+://[^:/@]*:)[^@]*(?=@)")
_QUERY_PARAMETER = re.compile(r"(?P<head>[?&](?P<name>[^=&#]*)=)[^&#]*")
# A password option inside a parameter's value (`options=-c%20password%3D...`).
_PASSWORD_OPTION = re.compile(r"(?P<head>(?i:password|passwd|pwd)(?:=|%3D))[^&#\s%]*")


def _masked_url(url: str) -> str:
    """`url` with its password, each secret-looking query value (the names the log filter
    takes for secrets: bot.logsafety.is_secret_parameter) and any password option masked."""
    masked = _URL_PASSWORD.sub(r"\g<head>**********", url, count=1)
    masked = _QUERY_PARAMETER.sub(
        lambda m: m["head"] + "**********" if is_secret_parameter(m["name"]) else m[0], masked
    )
    return _PASSWORD_OPTION.sub(r"\g<head>**********", masked)
