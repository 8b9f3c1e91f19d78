"""Sites and keys: the SQL rows (adapters/support/models.py) and the in-memory directory every
request is checked against.

    public key   "pk_..."  one per site, in the widget's <script> tag; names the site, proves
                           nothing: the browser's Origin must be one of the site's origins
    server key   "sk_..."  secret, for the company's back end; only its SHA-256 is stored
                           and it is shown once, when made

The directory reloads every site and live key hash from SQL at most every REFRESH_S, so a
key revoked by `parley support key revoke` on another machine stops working within that time
on every worker, without a query per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.errors import ConfigError
from bot.knowledge.types import check_collection
from bot.storage.database import all_rows, run_on_connection
from bot.text.languages import language_problem
from bot.text.storable import text_problem
from bot.types import utcnow

from .models import SupportKeyRow, SupportSiteRow

REFRESH_S = 10.0
MAX_SITE_NAME_CHARS = 64
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
# A label of a host name as a browser sends it (IDNA done; browsers take a hyphen at either
# end, "foo-.example.com"); "" is the root of "shop.example.".
HOST_LABEL = re.compile(r"[a-z0-9_-]+|")
PUBLIC_PREFIX = "pk_"
SECRET_PREFIX = "sk_"


@dataclass(frozen=True, slots=True)
class Site:
    id: int
    name: str
    public_key: str
    origins: tuple[str, ...]
    languages: tuple[str, ...]
    system_prompt: str
    collection: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    site: str
    created_at: str
    revoked: bool


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalize_origin(origin: str) -> str:
    """An origin as a browser sends it: "https://Shop.example:443/" -> "https://shop.example"
    (lower case, no default port, an international name in its ASCII form). ConfigError when
    it is no origin, or one no browser can send (a user name, a port over 65535)."""
    cleaned = origin.strip().rstrip("/").lower()
    refused = ConfigError(f"not an origin (scheme://host[:port]): {origin[:100]!r}")
    if "*" in cleaned:
        raise ConfigError(
            f"{origin[:100]!r}: a browser sends its page's own origin, never a pattern; "
            "list each origin (https://a.shop.example, https://b.shop.example)"
        )
    if not ORIGIN.fullmatch(cleaned) or not cleaned.isprintable() or "@" in cleaned:
        raise refused
    parts = urlsplit(cleaned)
    try:
        port = parts.port
        host = parts.hostname or ""
        if ":" not in host:  # a name (an IPv6 address stays as written)
            host = host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise refused from None
    if not host or (":" not in host and not all(map(HOST_LABEL.fullmatch, host.split(".")))):
        raise refused
    if ":" in host:  # IPv6: back in its brackets
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def check_site_name(name: str) -> None:
    if len(name) > MAX_SITE_NAME_CHARS:
        raise ConfigError(
            f"site name {name[:100]!r}: {len(name)} characters; at most {MAX_SITE_NAME_CHARS}"
        )
    if not SITE_NAME.fullmatch(name):
        raise ConfigError(f"site name {name[:100]!r}: lower-case letters, digits, - and _ only")


def check_languages(languages: Sequence[str]) -> list[str]:
    """The site's languages, each once, in their order; a language no one can name refused."""
    for language in languages:
        if problem := language_problem(language):
            raise ConfigError(problem)
    return list(dict.fromkeys(languages))


def _check_text(what: str, text: str, *, lines: bool = False) -> None:
    problem = text_problem(text, lines=lines)
    if problem:
        raise ConfigError(f"{what}: {problem}")


def _stored_origin(origin: str) -> str:
    """An origin as an earlier Parley stored it (with a default port, an international name
    as written), in the form browsers send; one that is no origin now stays as it was."""
    try:
        return normalize_origin(origin)
    except ConfigError:
        return origin


def _site(row: Any) -> Site:
    """A site from a row of support_sites (read with Core: a Row, attribute access)."""
    return Site(
        id=int(row.id),
        name=str(row.name),
        public_key=str(row.public_key),
        origins=tuple(dict.fromkeys(_stored_origin(o) for o in json.loads(str(row.origins)))),
        languages=tuple(json.loads(str(row.languages))),
        system_prompt=str(row.system_prompt),
        collection=str(row.collection),
    )


class SiteStore:
    """The rows, read and written on the history's engine (it does not own it)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_site(
        self,
        name: str,
        origins: Sequence[str],
        *,
        system_prompt: str = "",
        languages: Sequence[str] = (),
        collection: str = "",
    ) -> Site:
        check_site_name(name)
        languages = check_languages(languages)
        _check_text("system prompt", system_prompt, lines=True)
        check_collection(collection)
        cleaned = list(dict.fromkeys(normalize_origin(o) for o in origins))
        values = {
            "name": name,
            "public_key": PUBLIC_PREFIX + secrets.token_urlsafe(18),
            "origins": json.dumps(cleaned),
            "languages": json.dumps(list(languages)),
            "system_prompt": system_prompt,
            "collection": collection,
        }

        async def insert(conn: AsyncConnection) -> int:
            taken = await conn.scalar(
                sa.select(SupportSiteRow.id).where(SupportSiteRow.name == name)
            )
            if taken is not None:
                raise ConfigError(f"a site named {name!r} exists already")
            result = await conn.execute(
                sa.insert(SupportSiteRow).values(values).returning(SupportSiteRow.id)
            )
            return int(result.scalar_one())

        site_id = await run_on_connection(self._engine, insert, write=True)
        return Site(site_id, name, str(values["public_key"]), tuple(cleaned), tuple(languages),
                    system_prompt, collection)  # fmt: skip

    async def update_site(
        self,
        name: str,
        *,
        add_origins: Sequence[str] = (),
        remove_origins: Sequence[str] = (),
        system_prompt: str | None = None,
        languages: Sequence[str] | None = None,
        collection: str | None = None,
    ) -> Site:
        """Change a site in place (None: keep); its public key stays, so its pages do not
        change. Read and written in one transaction, the row locked: two operators adding
        origins at once keep both."""
        if languages is not None:
            languages = check_languages(languages)
        if system_prompt is not None:
            _check_text("system prompt", system_prompt, lines=True)
        if collection is not None:
            check_collection(collection)
        adding = [normalize_origin(o) for o in add_origins]
        removing = {normalize_origin(o) for o in remove_origins}

        async def change(conn: AsyncConnection) -> Site:
            row = (
                await conn.execute(
                    sa.select(SupportSiteRow).where(SupportSiteRow.name == name).with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise ConfigError(f"no site named {name!r} (parley support site list)")
            site = _site(row)
            if unknown := sorted(removing - set(site.origins)):
                raise ConfigError(f"site {name!r} has no origin {unknown[0]!r}")
            origins = [o for o in dict.fromkeys([*site.origins, *adding]) if o not in removing]
            if not origins:
                raise ConfigError(f"site {name!r} would have no origin left; add one first")
            changed = replace(
                site,
                origins=tuple(origins),
                languages=site.languages if languages is None else tuple(languages),
                system_prompt=site.system_prompt if system_prompt is None else system_prompt,
                collection=site.collection if collection is None else collection,
            )
            await conn.execute(
                sa.update(SupportSiteRow)
                .where(SupportSiteRow.id == site.id)
                .values(
                    origins=json.dumps(origins),
                    languages=json.dumps(list(changed.languages)),
                    system_prompt=changed.system_prompt,
                    collection=changed.collection,
                )
            )
            return changed

        return await run_on_connection(self._engine, change, write=True)

    async def remove_site(self, name: str) -> list[str]:
        """Delete a site and its server keys (the ids of its live keys are returned). Its
        conversations and their history stay: they are keyed by "<site>:<visitor>", not by
        the row. Its public key, server keys and visitor tokens then name no site."""

        async def remove(conn: AsyncConnection) -> list[str]:
            site_id = await conn.scalar(
                sa.select(SupportSiteRow.id).where(SupportSiteRow.name == name)
            )
            if site_id is None:
                raise ConfigError(f"no site named {name!r} (parley support site list)")
            live = await conn.scalars(
                sa.select(SupportKeyRow.key_id)
                .where(SupportKeyRow.site_id == site_id, SupportKeyRow.revoked_at.is_(None))
                .order_by(SupportKeyRow.id)
            )
            revoked = list(live)
            # Not left to ON DELETE CASCADE: on SQLite that needs the connection's pragma.
            await conn.execute(sa.delete(SupportKeyRow).where(SupportKeyRow.site_id == site_id))
            await conn.execute(sa.delete(SupportSiteRow).where(SupportSiteRow.id == site_id))
            return revoked

        return await run_on_connection(self._engine, remove, write=True)

    async def sites(self) -> list[Site]:
        stmt = sa.select(SupportSiteRow).order_by(SupportSiteRow.name)
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, stmt))
        return [_site(row) for row in rows]

    async def add_key(self, site_name: str) -> tuple[str, str]:
        """A new server key for the site: (key_id, the secret key, shown only now)."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(6)

        async def insert(conn: AsyncConnection) -> None:
            site_id = await conn.scalar(
                sa.select(SupportSiteRow.id).where(SupportSiteRow.name == site_name)
            )
            if site_id is None:
                raise ConfigError(f"no site named {site_name!r} (parley support site list)")
            await conn.execute(
                sa.insert(SupportKeyRow).values(
                    key_id=key_id, site_id=site_id, secret_sha256=hash_secret(secret)
                )
            )

        await run_on_connection(self._engine, insert, write=True)
        return key_id, secret

    async def revoke_key(self, key_id: str) -> None:
        stmt = (
            sa.update(SupportKeyRow)
            .where(SupportKeyRow.key_id == key_id, SupportKeyRow.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )

        async def revoke(conn: AsyncConnection) -> int:
            return (await conn.execute(stmt)).rowcount

        if await run_on_connection(self._engine, revoke, single=True) == 0:
            raise ConfigError(f"no live key {key_id!r} (parley support site list shows keys)")

    async def keys(self) -> list[KeyInfo]:
        stmt = (
            sa.select(SupportKeyRow.key_id, SupportSiteRow.name, SupportKeyRow.created_at,
                      SupportKeyRow.revoked_at)
            .join(SupportSiteRow, SupportSiteRow.id == SupportKeyRow.site_id)
            .order_by(SupportSiteRow.name, SupportKeyRow.id)
        )  # fmt: skip
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, stmt))
        return [KeyInfo(r[0], r[1], r[2].isoformat(timespec="seconds"), r[3] is not None)
                for r in rows]  # fmt: skip

    async def live_key_hashes(self) -> dict[str, int]:
        """SHA-256 of each key not revoked -> its site's id."""
        stmt = sa.select(SupportKeyRow.secret_sha256, SupportKeyRow.site_id).where(
            SupportKeyRow.revoked_at.is_(None)
        )
        rows = await run_on_connection(self._engine, lambda conn: all_rows(conn, stmt))
        return {h: int(s) for h, s in rows}


class SiteDirectory:
    """Every site and live server key, in memory, reloaded at most every REFRESH_S."""

    def __init__(self, store: SiteStore, *, refresh_s: float = REFRESH_S) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._loaded_at = -float("inf")
        self._lock = asyncio.Lock()
        self._by_id: dict[int, Site] = {}
        self._by_name: dict[str, Site] = {}
        self._by_public: dict[str, Site] = {}
        self._secrets: dict[str, int] = {}
        self.all_origins: frozenset[str] = frozenset()

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < self._refresh_s:
            return
        async with self._lock:
            if not force and time.monotonic() - self._loaded_at < self._refresh_s:
                return
            sites = await self._store.sites()
            self._secrets = await self._store.live_key_hashes()
            self._by_id = {s.id: s for s in sites}
            self._by_name = {s.name: s for s in sites}
            self._by_public = {s.public_key: s for s in sites}
            self.all_origins = frozenset(o for s in sites for o in s.origins)
            self._loaded_at = time.monotonic()

    async def by_public_key(self, key: str) -> Site | None:
        await self.refresh()
        return self._by_public.get(key)

    async def by_secret(self, secret: str) -> Site | None:
        await self.refresh()
        site_id = self._secrets.get(hash_secret(secret))
        return self._by_id.get(site_id) if site_id is not None else None

    async def by_id(self, site_id: int) -> Site | None:
        await self.refresh()
        return self._by_id.get(site_id)

    def cached(self, name: str) -> Site | None:
        """The site as last loaded (no I/O): for the core's synchronous hooks."""
        return self._by_name.get(name)
