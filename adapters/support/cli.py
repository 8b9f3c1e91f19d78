"""`parley support ...`: the support channel's sites and server keys.

    parley support site add NAME --origin URL... [--prompt-file F] [--language xx]...
                                                  [--collection C]
    parley support site update NAME [--origin URL]... [--remove-origin URL]...
                                    [--prompt-file F] [--language xx]... [--collection C]
    parley support site remove NAME    its keys go with it; its conversations' history stays
    parley support site list
    parley support key add SITE        prints the new key once: only its hash is kept
    parley support key revoke KEY_ID   workers stop taking it within sites.REFRESH_S

Workers see a change within sites.REFRESH_S. Bad input (a name, an origin, an unknown site or
key, a prompt file that is not UTF-8 or holds a control character) is one line and exit status
2, found before anything is written; a database failure is one line naming the driver's error
(never the statement, its values or a new key) and exit status 3.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc

from bot.errors import ConfigError, StorageError
from bot.knowledge.types import check_collection
from bot.settings import Settings
from bot.storage.database import create_engine, known_failure
from bot.storage.migrate import ensure_schema
from bot.text.storable import text_problem

from .sites import REFRESH_S, SiteStore, check_languages, check_site_name, normalize_origin


def add_support_parser(sub: Any) -> None:
    """Register `support` on the `parley` command's subparsers."""
    support = sub.add_parser("support", help="support channel: sites and server keys")
    things = support.add_subparsers(dest="support_thing", required=True)
    site = things.add_parser("site", help="websites the widget and API serve")
    site_actions = site.add_subparsers(dest="support_action", required=True)
    add = site_actions.add_parser("add", help="add a site and print its public key")
    add.add_argument("name")
    add.add_argument(
        "--origin",
        action="append",
        required=True,
        metavar="URL",
        help="an origin its pages are on, e.g. https://shop.example (repeatable)",
    )
    _site_details(add, keep=False)
    update = site_actions.add_parser("update", help="change a site; its public key stays")
    update.add_argument("name")
    update.add_argument(
        "--origin", action="append", default=[], metavar="URL", help="an origin to add"
    )
    update.add_argument(
        "--remove-origin", action="append", default=[], metavar="URL", help="one to remove"
    )
    _site_details(update, keep=True)
    remove = site_actions.add_parser(
        "remove", help="remove a site and its keys; its conversations' history stays"
    )
    remove.add_argument("name")
    site_actions.add_parser("list", help="list sites and their keys")
    key = things.add_parser("key", help="secret server keys")
    key_actions = key.add_subparsers(dest="support_action", required=True)
    key_add = key_actions.add_parser("add", help="make a server key for a site")
    key_add.add_argument("site")
    revoke = key_actions.add_parser("revoke", help="revoke a server key")
    revoke.add_argument("key_id")
    support.set_defaults(func=cmd_support)  # fmt: skip


def _site_details(parser: Any, *, keep: bool) -> None:
    """The options `add` and `update` share; with `keep` (update) what is not given stays."""
    parser.add_argument(
        "--prompt-file", type=Path, help="the site's system prompt (UTF-8 text; empty: default)"
    )
    parser.add_argument(
        "--language",
        action="append",
        default=None if keep else [],
        metavar="xx",
        help="a language its visitors are answered in; the first is the default"
        + (" (replaces the site's list)" if keep else ""),
    )
    parser.add_argument(
        "--collection",
        default=None if keep else "",
        help="its knowledge-base collection ('': the default)",
    )


@asynccontextmanager
async def _sites(settings: Settings) -> AsyncIterator[SiteStore]:
    db = settings.database
    url = db.url.get_secret_value()
    await ensure_schema(url, db.auto_migrate, timeout_s=db.timeout_s)
    engine = create_engine(url, echo=db.echo, pool_size=1)
    try:
        yield SiteStore(engine)
    except (sa_exc.SQLAlchemyError, StorageError) as exc:
        # The store's calls only (ensure_schema's lines above name no value and say what to
        # do: "run `parley db upgrade`"). SQLAlchemy's text quotes the statement and its
        # values: a new public key, a prompt; a driver's message may quote a value too. Only
        # the driver's error class is said.
        raise StorageError(f"database error: {_driver_error(exc, url)}") from None
    finally:
        await engine.dispose()


async def cmd_support(settings: Settings, args: argparse.Namespace) -> int:
    action = (args.support_thing, args.support_action)
    prompt = _checked_input(args)
    try:
        await _run(settings, args, action, prompt)
    except sa_exc.SQLAlchemyError as exc:  # as before: the store's are caught in _sites
        url = settings.database.url.get_secret_value()
        raise StorageError(f"database error: {_driver_error(exc, url)}") from None
    return 0


def _driver_error(exc: BaseException, url: str) -> str:
    """What the driver's code says went wrong where it is one an operator can act on (a full
    disk, a read-only file: `known_failure`), else the name of the driver's own error under
    SQLAlchemy's wrapping (asyncpg's, say CharacterNotInRepertoireError), never its message:
    that may quote a value."""
    known = known_failure(exc, url)
    if known:
        return known
    names: list[str] = []
    each: BaseException | None = exc
    while each is not None and len(names) < 8:
        names.append(type(each).__name__)
        each = getattr(each, "orig", None) or each.__cause__
    return names[-1]


async def _run(
    settings: Settings, args: argparse.Namespace, action: tuple[str, str], prompt: str | None
) -> None:
    async with _sites(settings) as store:
        if action == ("site", "add"):
            await _add_site(store, args, prompt)
        elif action == ("site", "update"):
            await _update_site(store, args, prompt)
        elif action == ("site", "remove"):
            revoked = await store.remove_site(args.name)
            keys = f" and its keys {', '.join(revoked)}" if revoked else ""
            print(f"removed site {args.name}{keys}; its conversations' history stays")
            print(f"every worker refuses its keys and visitor tokens within {REFRESH_S:.0f} s")
        elif action == ("site", "list"):
            await _list(store)
        elif action == ("key", "add"):
            key_id, secret = await store.add_key(args.site)
            print(f"server key {key_id} for {args.site}:\n  {secret}")
            print("keep it secret: it is shown only now (Authorization: Bearer <key>)")
        else:
            await store.revoke_key(args.key_id)
            print(f"revoked {args.key_id}; every worker refuses it within {REFRESH_S:.0f} s")


def _checked_input(args: argparse.Namespace) -> str | None:
    """The command's input checked before the database is opened (so bad input writes
    nothing, not even a migration), each problem one line naming its option; returns the
    prompt file's text (None: not given)."""
    if args.support_thing == "site" and args.support_action == "add":
        check_site_name(args.name)
    for option, value in (("site name", getattr(args, "name", None)),
                          ("site", getattr(args, "site", None)),
                          ("key id", getattr(args, "key_id", None))):  # fmt: skip
        if value is not None and (problem := text_problem(value)):
            raise ConfigError(f"{option}: {problem}")
    if getattr(args, "collection", None) is not None:
        check_collection(args.collection, "--collection")
    for origin in [*(getattr(args, "origin", None) or []), *getattr(args, "remove_origin", [])]:
        normalize_origin(origin)
    check_languages(getattr(args, "language", None) or [])
    return _prompt(getattr(args, "prompt_file", None))


def _prompt(path: Path | None) -> str | None:
    if path is None:
        return None
    shown = repr(str(path))[1:-1]  # a file name with a control character stays one line
    try:
        text = path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--prompt-file {shown}: not UTF-8 text (at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"--prompt-file {shown}: {exc.strerror or exc}") from None
    problem = text_problem(text, lines=True)
    if problem:
        raise ConfigError(f"--prompt-file {shown}: {problem}")
    return text


async def _add_site(store: SiteStore, args: argparse.Namespace, prompt: str | None) -> None:
    site = await store.add_site(
        args.name,
        args.origin,
        system_prompt=prompt or "",
        languages=args.language,
        collection=args.collection,
    )
    print(f"site {site.name}: public key {site.public_key}")
    print(f'  <script src="https://YOUR-PARLEY/widget.js" data-site-key="{site.public_key}"'
          " async></script>")  # fmt: skip


async def _update_site(store: SiteStore, args: argparse.Namespace, prompt: str | None) -> None:
    kept = (args.prompt_file, args.language, args.collection)
    if not (args.origin or args.remove_origin) and all(option is None for option in kept):
        raise ConfigError(
            "nothing to change: give --origin, --remove-origin, --prompt-file, --language "
            "or --collection"
        )
    site = await store.update_site(
        args.name,
        add_origins=args.origin,
        remove_origins=args.remove_origin,
        system_prompt=prompt,
        languages=args.language,
        collection=args.collection,
    )
    print(f"site {site.name} updated; origins: {', '.join(site.origins)}")
    print(f"every worker uses the change within {REFRESH_S:.0f} s")


async def _list(store: SiteStore) -> None:
    sites = await store.sites()
    if not sites:
        print("no sites: add one with `parley support site add NAME --origin URL`")
        return
    keys = await store.keys()
    for site in sites:
        print(f"{site.name}  {site.public_key}  origins: {', '.join(site.origins)}")
        details = [f"languages: {', '.join(site.languages) or '-'}",
                   f"collection: {site.collection or '(default)'}",
                   f"prompt: {'own' if site.system_prompt else 'default'}"]  # fmt: skip
        print("  " + "; ".join(details))
        for key in (k for k in keys if k.site == site.name):
            state = "revoked" if key.revoked else "live"
            print(f"  key {key.key_id}  {state}  made {key.created_at}")
