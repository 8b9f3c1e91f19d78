"""`parley doctor` for the Chatwoot adapter: Chatwoot answers at the URL, takes the token, and
can authenticate its webhooks the way they are configured. Read-only: two GETs, no message.

    GET /api             Chatwoot's version and health, without a token
    GET /api/v1/profile  with the token: an agent bot's token is refused with "Access to this
                         endpoint is not authorized for bots" (Chatwoot lets bot tokens call
                         a short list of endpoints, and this is not one), an unknown token with
                         "Invalid Access Token"; a user's token gets the user's profile
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from bot.errors import AdapterError, ConfigError

from .client import ChatwootClient, ChatwootError
from .settings import ChatwootSettings

# The first Chatwoot release that signs agent bot webhooks (X-Chatwoot-Signature).
SIGNING_VERSION = (4, 13)
_BOT_REFUSED = "not authorized for bots"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


async def doctor(settings: ChatwootSettings) -> str:
    if (problem := settings.missing()) is not None:  # as `parley run` would say it
        raise ConfigError(problem)
    where = _where(settings)
    client = ChatwootClient(settings)
    try:
        version = await _version(client, where)
        token = await check_token(client)
    finally:
        await client.aclose()
    _signing(settings, version)
    account = f", account {settings.account_id} only" if settings.account_id else ""
    return f"Chatwoot {version} at {where}, {token}{account}"


def _where(settings: ChatwootSettings) -> str:
    return urlsplit(str(settings.url)).hostname or "?"  # never the URL's user or path


async def _index(client: ChatwootClient, where: str) -> dict[str, Any]:
    """GET /api: its JSON object; AdapterError unless it answers 200, saying which setting to
    check (a network failure was "chatwoot GET /api: ConnectError", no host and no hint)."""
    try:
        status, data = await client.probe("/api")
    except ChatwootError as exc:
        failure = str(exc).rpartition(": ")[2]  # the error's type, never the URL
        raise AdapterError(
            f"no Chatwoot answers at {where} (GET /api: {failure}): check "
            "PARLEY_CHATWOOT__URL and that Chatwoot runs and is reachable from here"
        ) from None
    if status != 200:
        raise AdapterError(
            f"no Chatwoot answers at {where} (GET /api: HTTP {status}): check PARLEY_CHATWOOT__URL"
        )
    return data


async def _version(client: ChatwootClient, where: str) -> str:
    data = await _index(client, where)
    version = data.get("version")
    if not isinstance(version, str):
        raise AdapterError(f"no Chatwoot answers at {where} (GET /api: HTTP 200)")
    version = re.sub(r"[^\w.+-]", "", version)[:20]  # printed: nothing but a version's signs
    failing = [k for k in ("data_services", "queue_services") if data.get(k) == "failing"]
    if failing:
        raise AdapterError(f"Chatwoot {version} at {where} reports {' and '.join(failing)} failing")
    return version


async def check_reachable(client: ChatwootClient, settings: ChatwootSettings) -> int | None:
    """At start (as Telegram's and Discord's adapters check theirs): Chatwoot answers at the
    URL and takes the token; else one AdapterError line, and `parley run` exits 3. Returns
    the id of the user whose token it is (None: an agent bot's): Parley's answers are that
    user's messages, never an agent's."""
    await _index(client, _where(settings))
    return (await _token(client))[1]


async def check_token(client: ChatwootClient) -> str:
    return (await _token(client))[0]


async def _token(client: ChatwootClient) -> tuple[str, int | None]:
    status, data = await client.probe("/api/v1/profile")
    error = str(data.get("error", ""))
    if status == 401 and _BOT_REFUSED in error:
        return "agent bot token accepted", None
    if status == 200:
        user = data.get("id")
        told = "a user's access token (answers appear as that user; an agent bot's is meant)"
        return told, user if isinstance(user, int) and not isinstance(user, bool) else None
    if status == 401:
        raise AdapterError(
            "Chatwoot refused the API access token (401 Invalid Access Token): check "
            "PARLEY_CHATWOOT__API_ACCESS_TOKEN"
        )
    raise AdapterError(f"the token could not be checked (GET /api/v1/profile: HTTP {status})")


def _signing(settings: ChatwootSettings, version: str) -> None:
    found = _VERSION.match(version)
    if settings.path_secret is not None or found is None:
        return
    if (int(found.group(1)), int(found.group(2))) < SIGNING_VERSION:
        raise AdapterError(
            f"Chatwoot {version} does not sign agent bot webhooks (4.13 and later do), so "
            "every one would be refused: set PARLEY_CHATWOOT__PATH_SECRET"
        )
