"""`parley data forget --platform P --user ID` and `parley data prune --older-than 90d`: an
operator's retention commands (docs/security.md). Without `--yes` they only count what they
would delete. The deletions are the Store's (`forget_user`, `prune`); the context windows of
the conversations they changed are dropped from Redis, where the workers share one.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from typing import Any

from bot.settings import Settings
from bot.storage import keys
from bot.storage.base import Erasure
from bot.storage.cache import RedisCache, build_cache
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.sql_store import SqlStore
from bot.text.storable import storable_argument
from bot.types import utcnow

_AGE = re.compile(r"^(\d{1,6})([dh])$")


def add_data_parser(sub: Any) -> None:
    """Register `data` on the `parley` command's subparsers."""
    data = sub.add_parser("data", help="forget a user, prune old history (retention)")
    actions = data.add_subparsers(dest="action", required=True)
    forget = actions.add_parser("forget", help="delete a user's messages, preferences and row")
    forget.add_argument("--platform", required=True, type=storable_argument,
                        help="telegram, discord, console...")  # fmt: skip
    forget.add_argument("--user", required=True, type=storable_argument,
                        help="the user's id on that platform")  # fmt: skip
    prune = actions.add_parser("prune", help="delete messages older than an age")
    prune.add_argument("--older-than", required=True, type=_age, metavar="AGE",
                       help="90d (days) or 12h (hours)")  # fmt: skip
    for each in (forget, prune):
        each.add_argument("--yes", action="store_true", help="delete (default: only count)")
    forget.set_defaults(func=cmd_forget)
    prune.set_defaults(func=cmd_prune)


def _age(value: str) -> timedelta:
    found = _AGE.match(value.strip())
    if found is None or int(found.group(1)) == 0:
        raise argparse.ArgumentTypeError("an age such as 90d (days) or 12h (hours)")
    number, unit = int(found.group(1)), found.group(2)
    return timedelta(days=number) if unit == "d" else timedelta(hours=number)


async def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    store = await _store(settings)
    try:
        erased = await store.forget_user(args.platform, args.user, apply=args.yes)
    finally:
        await store.aclose()
    if not erased.users:
        print(f"no {args.platform} user {args.user} is recorded: nothing to forget")
        return 0
    done = _verb(args.yes)
    print(f"messages: {erased.messages} {done}")
    print(f"conversations: {len(erased.deleted)} {done} whole (nobody else wrote there)")
    print(f"summaries: {len(erased.cleared)} {'cleared' if args.yes else 'would be cleared'}")
    print(f"user: 1 {done}, with their preferences and token usage")
    return await _finish(settings, args.yes, erased)


async def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    store = await _store(settings)
    try:
        erased = await store.prune(utcnow() - args.older_than, apply=args.yes)
    finally:
        await store.aclose()
    print(f"messages: {erased.messages} {_verb(args.yes)}")
    print(f"summaries: {len(erased.cleared)} {'cleared' if args.yes else 'would be cleared'}")
    return await _finish(settings, args.yes, erased)


async def _store(settings: Settings) -> SqlStore:
    db = settings.database
    url = db.url.get_secret_value()
    await ensure_schema(url, db.auto_migrate, timeout_s=db.timeout_s)
    store = SqlStore(create_engine(url, echo=db.echo, pool_size=1))
    try:
        await store.start()  # a database that does not answer: StorageError, one line, exit 3
    except BaseException:
        await store.aclose()
        raise
    return store


def _verb(applied: bool) -> str:
    return "deleted" if applied else "would be deleted"


async def _finish(settings: Settings, applied: bool, erased: Erasure) -> int:
    if not applied:
        print("dry run: nothing was deleted; add --yes to delete")
        return 0
    cache = build_cache(settings.redis)
    if not isinstance(cache, RedisCache):
        print(
            "cache: in process only; a running worker keeps its context windows until it restarts"
        )
        return 0
    try:
        await cache.ping()  # one that does not answer is said (exit 3), not passed over
        for conversation_id in (*erased.cleared, *erased.deleted):
            await cache.delete(keys.window(conversation_id))
    finally:
        await cache.aclose()
    print(f"cache: {len(erased.cleared) + len(erased.deleted)} context windows dropped from Redis")
    return 0
