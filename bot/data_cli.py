"""`parley data forget --platform P --user ID [--yes]`: an operator forgets one chat user (an
erasure request; docs/security.md). Without `--yes` it only counts what would go.

The deletions are the Store's (`forget_user`, one transaction). Every Redis key of the
conversations it changes and of the user's messages (the workers share them there) is deleted
before it, from a dry run's count, and again after it (a copy cached meanwhile); each DEL is
Redis's own answer, not the cache's, which passes a failure over: a key that fails to go is one
line, exit 3, and, before the rows went, a rerun finds everything again. After the rows went a
rerun finds nothing in SQL: the keys still to drop are kept in a file of the data folder
(forget-pending/, written before the rows go, removed once they are all gone), from which a
rerun finishes.

A worker that keeps its caches in its own memory is reached through SQL: its
context windows are stale by the count of redactions the forget raised (ContextLoader), and on
PostgreSQL the user's row is gone, so a worker that remembers its id looks the user up again.
On SQLite the user's row stays as a tombstone (ids are never given out again) and a worker
could not tell: the command refuses while a worker has the database open.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from bot.adapter_registry import installed_adapters
from bot.budget import SUPPORT_PLATFORM, subjects_of
from bot.budget_counters import KEEP_S
from bot.errors import StorageError
from bot.settings import Settings, data_dir
from bot.storage import keys
from bot.storage.base import Forgotten
from bot.storage.cache import RedisCache, build_cache
from bot.storage.database import create_engine, lock_sqlite_file, sqlite_file
from bot.storage.migrate import ensure_schema
from bot.storage.redis_client import client_for
from bot.storage.sql_store import SqlStore
from bot.text.storable import storable_argument
from bot.types import ConversationKey

RUNNING_WORKER = (
    "data forget: a worker (parley run) has this SQLite database open and keeps the user's "
    "ids and context in its memory; stop it, forget the user, then start it again"
)


def add_data_parser(sub: Any) -> None:
    """Register `data` on the `parley` command's subparsers."""
    data = sub.add_parser("data", help="forget a user (an erasure request)")
    actions = data.add_subparsers(dest="action", required=True)
    forget = actions.add_parser("forget", help="delete what Parley holds of one chat user")
    forget.add_argument("--platform", required=True, type=_platform,
                        help="telegram, discord, console...")  # fmt: skip
    forget.add_argument("--user", required=True, type=_user_id,
                        help="the user's id on that platform")  # fmt: skip
    forget.add_argument("--yes", action="store_true", help="delete (default: only count)")
    forget.set_defaults(func=cmd_forget)


def _platform(value: str) -> str:
    value = storable_argument(value).strip()
    if not value or len(value) > 32:
        raise argparse.ArgumentTypeError("a platform name such as telegram")
    return value


def _unfindable(platform: str) -> str:
    """The chats of theirs the database cannot tell once their messages there are pruned:
    a group's, and a private chat's where its id is not the user's (a Discord DM's)."""
    spec = installed_adapters().get(platform)
    if spec is not None and spec.private_chat_is_user:
        return "a group chat"
    return f"a group chat, or a private chat ({platform} names it by its own id, not theirs),"


def _user_id(value: str) -> str:
    value = storable_argument(value).strip()
    if not value or len(value) > 255:
        raise argparse.ArgumentTypeError("the user's id on the platform, such as 12345")
    return value


async def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    db = settings.database
    url = db.url.get_secret_value()
    parsed = make_url(url)
    path = sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if path is not None and not path.exists():
        # Not made: a typo would otherwise give an empty database and "nothing to forget".
        raise StorageError(f"data forget: there is no database at {path} (database.url)")
    await ensure_schema(url, db.auto_migrate, timeout_s=db.timeout_s)
    lock = None
    if args.yes:
        # Redis first: were the rows deleted and Redis then found down, a second run would
        # find no user to look for, and the cached copies of their conversations would stay.
        await _redis_answers(settings)
        try:
            lock = lock_sqlite_file(url, exclusive=True)
        except BlockingIOError:
            raise StorageError(RUNNING_WORKER) from None
    try:
        if args.yes and _shared(settings):
            # Their Redis keys first, found by a dry run: a key that fails to go stops the
            # run before the rows that name the keys are deleted, so a rerun finds them again.
            found = await _forget(settings, args, apply=False)
            if found.users:
                names = _pending(settings, args, _key_names(settings, args, found))
                await _drop_keys(settings, args, names)
                # Kept before the rows go: a second pass that fails has them to finish from.
                _keep_pending(settings, args, names)
        forgotten = await _forget(settings, args, apply=args.yes)
    finally:
        if lock is not None:
            os.close(lock)
    left = _pending_file(settings, args)
    if not forgotten.users and args.yes and _shared(settings) and left.exists():
        # An earlier run deleted the rows, then Redis failed: its keys, from the file.
        dropped = await _drop_keys(settings, args, _pending(settings, args, []))
        left.unlink()
        print(f"no {args.platform} user {args.user} is recorded any more; cache: {dropped} "
              "keys of theirs an earlier run left dropped from Redis")  # fmt: skip
        return 0
    if not forgotten.users and not args.yes and _shared(settings) and left.exists():
        # Not "nothing to forget": the operator would not run it again to finish.
        print(f"no {args.platform} user {args.user} is recorded any more; cache: keys of "
              "theirs an earlier run left in Redis; add --yes to drop them")  # fmt: skip
        return 0
    if not forgotten.users:
        print(f"no {args.platform} user {args.user} is recorded: nothing to forget")
        return 0
    done = "deleted" if args.yes else "would be deleted"
    print(f"messages: {forgotten.messages} {done} (theirs, the answers to them, and the "
          '"what did I miss" answers of their group chats)')  # fmt: skip
    emptied = "emptied" if args.yes else "would be emptied"
    print(f"answers: {forgotten.emptied} of the bot's in their group chats {emptied}, "
          "since they may quote them")  # fmt: skip
    print(f"conversations: {len(forgotten.closed)} of their own {done}, "
          f"{len(forgotten.conversations) - len(forgotten.closed)} shared ones kept "
          "without them")  # fmt: skip
    print(f"user: 1 {done}, with their preferences, token usage and handoff rows")
    # Nothing left names such a chat as theirs: said, not passed over in silence.
    print(f"not found: {_unfindable(args.platform)} with no message of theirs left in it "
          "(all pruned): nothing there names them")  # fmt: skip
    if not args.yes:
        print("dry run: nothing was deleted; add --yes to delete")
        return 0
    return await _drop_cached(settings, args, forgotten)


async def _redis_answers(settings: Settings) -> None:
    cache = build_cache(settings.redis)
    try:
        if isinstance(cache, RedisCache):
            await cache.ping()  # one that does not answer: one line, exit 3
    finally:
        await cache.aclose()


def _shared(settings: Settings) -> bool:
    """Whether the workers share a Redis (build_cache: a URL, not empty)."""
    return bool(settings.redis.url and settings.redis.url.get_secret_value())


async def _forget(settings: Settings, args: argparse.Namespace, *, apply: bool) -> Forgotten:
    db = settings.database
    store = SqlStore(create_engine(db.url.get_secret_value(), echo=db.echo, pool_size=1))
    usage = [(s.scope, s.name) for s in _subjects(args) if s.scope == "user"]
    try:
        await store.ping()  # a database that does not answer: one line, exit 3
        return await store.forget_user(args.platform, args.user, usage, apply=apply)
    finally:
        await store.aclose()


def _subjects(args: argparse.Namespace) -> list[Any]:
    # The user a turn is counted against (bot.budget): "PLATFORM:ID".
    return subjects_of(ConversationKey(args.platform, args.user), args.user)


def _sender(args: argparse.Namespace) -> str:
    return f"{args.platform}:{args.user}"  # as the rate limits name a sender (sender_key)


async def _drop_cached(settings: Settings, args: argparse.Namespace, forgotten: Forgotten) -> int:
    if not _shared(settings):
        print("cache: none shared (no Redis); each worker notices in its next turn")
        return 0
    # Again after the rows: a worker may have cached a copy since the first pass. The
    # file keeps them until they are gone: a rerun finds no rows to name them.
    names = _pending(settings, args, _key_names(settings, args, forgotten))
    _keep_pending(settings, args, names)
    dropped = await _drop_keys(settings, args, names)
    _pending_file(settings, args).unlink(missing_ok=True)
    print(f"cache: {dropped} keys of theirs dropped from Redis")
    return 0


def _pending_file(settings: Settings, args: argparse.Namespace) -> Path:
    """The keys of theirs still to drop from Redis: named by a hash, not by their id, and of
    this deployment's key prefix: another one sharing the data folder (its own Redis) finds
    no file of its own, rather than claim these dropped and take the file away."""
    digest = hashlib.sha256()
    for part in (settings.redis.key_prefix, args.platform, args.user):  # each ends with a NUL
        digest.update(part.encode() + b"\0")
    return data_dir() / "forget-pending" / f"{digest.hexdigest()[:32]}.json"


# In the file, the user's id (in their key names: their sender, their private chat, a visitor's
# SITE:VISITOR) stands as this mark, put back from --user by the rerun: a file left behind
# names no one. No key name holds a NUL, so the names come back as they were.
_USER_MARK = "\0"


def _pending(settings: Settings, args: argparse.Namespace, names: list[str]) -> list[str]:
    """`names` and those an earlier run left in the file, each once."""
    path = _pending_file(settings, args)
    kept: list[str] = json.loads(path.read_text()) if path.exists() else []
    left = [name.replace(_USER_MARK, args.user) for name in kept]
    return list(dict.fromkeys([*left, *names]))


def _keep_pending(settings: Settings, args: argparse.Namespace, names: list[str]) -> None:
    path = _pending_file(settings, args)
    text = json.dumps([name.replace(args.user, _USER_MARK) for name in names])
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = path.with_suffix(".part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)  # one an earlier run left: the operator's alone too
            out.write(text)
        os.replace(part, path)  # whole or not there
    except OSError as exc:
        raise StorageError(f"data forget: cannot write {path} ({exc.strerror})") from exc


def _key_names(settings: Settings, args: argparse.Namespace, found: Forgotten) -> list[str]:
    """Every Redis key of theirs the rows name (their conversations, their messages)."""
    sender = _sender(args)
    names = [keys.rate(sender), keys.told(sender)]
    for cid in found.conversations:
        # A member's /stop is marked under their bare id (ConversationManager, its stop marks).
        names += [keys.window(cid), keys.chat_prefs(cid), keys.handoff(cid), keys.rate_told(cid),
                  keys.stop(cid, args.user)]  # fmt: skip
    for key in found.message_keys:
        names += [keys.deleted(key), keys.edited(key), keys.counted(sender, key)]
    if args.platform == SUPPORT_PLATFORM:  # a web chat visitor: SITE:VISITOR, its chat too
        names.append(keys.support_visitor(args.user))
    prefix = settings.redis.key_prefix
    return [keys.cached(prefix, name) for name in names]


async def _drop_keys(settings: Settings, args: argparse.Namespace, names: list[str]) -> int:
    """Delete every key of theirs, each asked of Redis itself: the cache's delete passes a
    failure over (right for a turn, not for an erasure), so one that fails is StorageError
    (one line, exit 3)."""
    # One DEL each: in a Redis Cluster the keys lie in many slots.
    await _delete(settings, [[name] for name in names])
    return len(names) + await _drop_redis_only(settings, args)


async def _delete(settings: Settings, batches: list[list[str]]) -> None:
    from redis.exceptions import RedisError

    client = client_for(settings.redis)
    if client is None:
        return
    try:
        for batch in batches:
            await client.delete(*batch)
    except (RedisError, OSError) as exc:
        raise StorageError(f"Redis failed dropping their keys ({type(exc).__name__})") from exc
    finally:
        await client.aclose()


# The days whose budget counters Redis may still keep: a counter outlives its day (in the
# budget's time zone, up to a day off UTC's) by budget_counters.KEEP_S.
_COUNTER_DAYS = range(-(KEEP_S // 86400) - 2, 2)


async def _drop_redis_only(settings: Settings, args: argparse.Namespace) -> int:
    """The user's keys kept in Redis alone: the shared token budget's counters
    (bot.budget_counters: their usage) and, for a web chat visitor, the event log its
    streams replay (adapters.support.events: their messages and the answers), as
    DELETE /v1/visitor drops it."""
    if not _shared(settings):
        return 0
    today = datetime.now(UTC).date()
    prefix = settings.redis.key_prefix
    batches: list[list[str]] = []
    if args.platform == SUPPORT_PLATFORM:
        # Two keys, two slots maybe: one DEL each.
        batches += [[keys.support_events(prefix, args.user)],
                    [keys.support_answered(prefix, args.user)]]  # fmt: skip
    for subject in _subjects(args):
        if subject.scope != "user":
            continue
        for offset in _COUNTER_DAYS:
            day = today + timedelta(days=offset)
            # One day's two keys share a Redis Cluster slot: one DEL each day.
            batches.append([keys.budget(prefix, day, subject.scope, subject.name, part)
                            for part in ("h", "z")])  # fmt: skip
    await _delete(settings, batches)
    return sum(len(b) for b in batches)
