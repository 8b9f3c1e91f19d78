"""One harness per adapter, so that one contract suite (tests/test_adapter_contract.py) runs
over all of them: each starts a real app and the real adapter, sends messages the way the
platform delivers them, and reads back what a person in the chat sees.

A new adapter joins the suite with a harness here and one line in HARNESSES.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from adapters.console import ConsoleAdapter, ConsoleSettings
from adapters.kit.runner import host_for
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.formatting import to_text
from adapters.telegram.settings import TelegramSettings
from bot.app import Parley
from bot.settings import Settings, load_settings
from tests.telegram_api import TOKEN, FakeBotApi
from tests.telegram_updates import text_update

USER = "1001"
GROUP_ADMIN = "1002"
GROUP_CHAT = -100555
PRIVATE_CHAT = 1001


class Harness(Protocol):
    app: Parley
    # The platform's longest message (what `seen` is checked against), and its length unit.
    limit: int
    length: Callable[[str], int]
    # Whether the platform has group conversations with admins of their own.
    groups: bool

    async def send(self, text: str, *, group: bool = False, admin: bool = False) -> None:
        """A message from the test user, or in a group from an admin of it."""
        ...

    def seen(self, *, group: bool = False) -> list[str]:
        """The chat's messages as its members read them, in order."""
        ...

    async def idle(self) -> None: ...


def settings_for(
    tmp_path: Path, adapter: str, *, database_url: str | None = None, **sections: Any
) -> Settings:
    """`database_url`: the database (a migrated PostgreSQL one); a SQLite file by default."""
    return load_settings(
        None,
        database={"url": database_url or f"sqlite+aiosqlite:///{tmp_path}/parley.db"},
        knowledge={"load_sample": False},
        adapters=[adapter],
        **sections,
    )


class CountingIntake:
    """The console's seam to the core, counting the lines it hands over, so that a test can
    wait until the console read everything written to it."""

    def __init__(self, intake: Any) -> None:
        self._intake = intake
        self.submitted = 0
        self.changed = asyncio.Event()

    async def submit(self, incoming: Any) -> Any:
        try:
            return await self._intake.submit(incoming)
        finally:
            self.submitted += 1
            self.changed.set()

    async def wait_until_answered(self, recorded: Any) -> bool:
        result: bool = await self._intake.wait_until_answered(recorded)
        return result


class ConsoleHarness:
    limit = 10**9  # a terminal has no message limit
    length = staticmethod(len)
    groups = False

    def __init__(self, app: Parley, feed: io.TextIOBase, counting: CountingIntake) -> None:
        self.app = app
        self._feed = feed
        self._counting = counting
        self._sent = 0
        self.out = io.StringIO()

    async def send(self, text: str, *, group: bool = False, admin: bool = False) -> None:
        self._feed.write(text + "\n")
        self._feed.flush()
        self._sent += 1

    def seen(self, *, group: bool = False) -> list[str]:
        # Each reply ends with a line break; a reply of several lines stays one message.
        text = self.out.getvalue()
        return [text] if text else []

    async def idle(self) -> None:
        while self._counting.submitted < self._sent:
            self._counting.changed.clear()
            await self._counting.changed.wait()
        await self.app.intake.idle()


@asynccontextmanager
async def console_harness(
    tmp_path: Path, backend: object | None, **sections: Any
) -> AsyncIterator[ConsoleHarness]:
    settings = settings_for(tmp_path, "console", console={"user": USER, **sections})
    read_end, write_end = os.pipe()
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        section = settings.section("console")
        assert isinstance(section, ConsoleSettings)
        with os.fdopen(read_end) as stdin, os.fdopen(write_end, "w") as feed:
            counting = CountingIntake(app.intake)
            harness = ConsoleHarness(app, feed, counting)
            adapter = ConsoleAdapter(
                counting,  # type: ignore[arg-type]
                section,
                stdin=stdin,
                stdout=harness.out,
                interactive=False,
            )
            app.intake.register("console", adapter, section.access)
            running = asyncio.create_task(adapter.run())
            try:
                yield harness
                await harness.idle()
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)


class TelegramHarness:
    limit = 4096
    groups = True

    @staticmethod
    def length(text: str) -> int:
        return len(text.encode("utf-16-le")) // 2  # Telegram counts UTF-16 code units

    def __init__(self, app: Parley, adapter: TelegramAdapter, api: FakeBotApi) -> None:
        self.app = app
        self.adapter = adapter
        self.api = api
        self._updates = itertools.count(1)

    async def send(self, text: str, *, group: bool = False, admin: bool = False) -> None:
        chat = GROUP_CHAT if group else PRIVATE_CHAT
        sender = int(GROUP_ADMIN if admin else USER)
        self.api.admins.add((GROUP_CHAT, int(GROUP_ADMIN)))
        payload = text_update(next(self._updates), chat, text, user_id=sender)
        await self.adapter.handle_update(_update(payload, self.adapter))

    def seen(self, *, group: bool = False) -> list[str]:
        return self.api.texts(GROUP_CHAT if group else PRIVATE_CHAT)

    async def idle(self) -> None:
        await self.adapter.idle()


def _update(payload: dict[str, Any], adapter: TelegramAdapter) -> Any:
    from telegram import Update

    return Update.de_json(payload, adapter.bot)


@asynccontextmanager
async def telegram_harness(
    tmp_path: Path,
    backend: object | None,
    *,
    database_url: str | None = None,
    redis: dict[str, Any] | None = None,
    conversation: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[TelegramHarness]:
    """`sections`: the telegram section's settings; `redis`, `conversation`: the core's;
    `database_url`: the database (a SQLite file in tmp_path by default)."""
    api = FakeBotApi()
    async with api.serving() as base_url:
        telegram = {"token": TOKEN, "base_url": base_url, "stream_interval_s": 0.05, **sections}
        core: dict[str, Any] = {"redis": redis} if redis else {}
        if conversation:
            core["conversation"] = conversation
        settings = settings_for(
            tmp_path, "telegram", database_url=database_url, telegram=telegram, **core
        )
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            section = settings.section("telegram")
            assert isinstance(section, TelegramSettings)
            adapter = TelegramAdapter(host_for(app), section)
            app.intake.register("telegram", adapter, section.access)
            async with adapter:
                yield TelegramHarness(app, adapter, api)
                await adapter.idle()


HARNESSES = {"console": console_harness, "telegram": telegram_harness}


def visible(text: str) -> str:
    """What a reader sees of a Markdown answer, whatever the platform did with its markup:
    the characters that are not markup or white space, in order."""
    plain = to_text(text) if "<" in text and "</" in text else text
    plain = re.sub(r"```[\w+#.-]*", "", plain)  # a fence's language is an attribute, unseen
    return "".join(ch for ch in plain if not ch.isspace() and ch not in "*_`#>|~-•")


class DiscordHarness:
    """The Discord adapter connected to a fake Discord (tests/discord_api.py): its gateway
    delivers the test's events (tests/discord_events.py) to the real client, its REST API
    takes the answers. A group message mentions the bot in the server's channel; an admin
    has a role with Manage Server."""

    limit = 2000
    length = staticmethod(len)
    groups = True

    def __init__(self, app: Parley, adapter: Any, api: Any) -> None:
        self.app = app
        self.adapter = adapter
        self.api = api
        self._sent = 0

    async def send(self, text: str, *, group: bool = False, admin: bool = False) -> None:
        from tests import discord_events as ev

        payload = ev.message_create(
            text,
            channel=ev.CHANNEL if group else ev.DM,
            author=ev.ADMIN if admin else ev.USER,
            roles=(ev.ADMIN_ROLE,) if admin else (ev.MEMBER_ROLE,),
            mentions_bot=group,
        )
        await self.deliver_event(payload)

    async def deliver_event(self, payload: dict[str, Any]) -> None:
        """One MESSAGE_CREATE over the gateway; returns once the adapter has handled it."""
        await self._push("MESSAGE_CREATE", payload)

    async def command(self, payload: dict[str, Any]) -> None:
        """One INTERACTION_CREATE (a slash command); returns once it is deferred and recorded."""
        self.api.expect_interaction(payload["token"], int(payload["channel_id"]))
        await self._push("INTERACTION_CREATE", payload)

    async def _push(self, kind: str, payload: dict[str, Any]) -> None:
        self.api.push(kind, payload)
        self._sent += 1
        async with asyncio.timeout(60):  # a dead connection fails the test, never hangs it
            await self.adapter.handled(self._sent)

    def seen(self, *, group: bool = False) -> list[str]:
        from tests import discord_events as ev

        texts: list[str] = self.api.texts(ev.CHANNEL if group else ev.DM)
        return texts

    async def idle(self) -> None:
        async with asyncio.timeout(60):
            await self.adapter.handled(self._sent)
        await self.adapter.idle()


@asynccontextmanager
async def discord_harness(
    tmp_path: Path,
    backend: object | None,
    *,
    conversation: dict[str, Any] | None = None,
    database_url: str | None = None,
    redis: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[DiscordHarness]:
    """`sections`: the discord section's settings; `conversation`, `redis`: the core's;
    `database_url`: the database (a SQLite file in tmp_path by default)."""
    from adapters.discord.adapter import DiscordAdapter
    from adapters.discord.settings import DiscordSettings
    from adapters.kit.gate import Rate, Rates
    from tests import discord_api, discord_events

    # Discord's 5 per 5 s, ten times faster on both sides: the same shape, quicker tests.
    api = discord_api.FakeDiscordApi(per_channel=(5, 0.5), guilds=[discord_events.guild_create()])
    rates = Rates(per_chat=Rate(5, 0.5), overall=Rate(50, 1.0))
    async with api.serving():
        section_data = {"token": discord_api.TOKEN, "stream_interval_s": 0.05, **sections}
        core: dict[str, Any] = {"conversation": conversation} if conversation else {}
        if redis:
            core["redis"] = redis
        settings = settings_for(
            tmp_path, "discord", database_url=database_url, discord=section_data, **core
        )
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            section = settings.section("discord")
            assert isinstance(section, DiscordSettings)
            adapter = DiscordAdapter(host_for(app), section, rates=rates)
            app.intake.register("discord", adapter, section.access)
            async with adapter:
                # The gateway sends READY and GUILD_CREATE before any test event, in order.
                connection = asyncio.create_task(adapter.run())
                try:
                    harness = DiscordHarness(app, adapter, api)
                    yield harness
                    await harness.idle()
                finally:
                    connection.cancel()
                    await asyncio.gather(connection, return_exceptions=True)


class SupportHarness:
    """The support API through its real Starlette app (httpx's ASGI transport): a visitor of
    one site posts messages; what it sees is its conversation's events, each answer and
    notice once (the event stream a widget renders)."""

    limit = 10**9  # a web chat has no message limit
    length = staticmethod(len)
    groups = False

    def __init__(self, app: Parley, adapter: Any, client: Any, token: str, chat: str) -> None:
        self.app = app
        self.adapter = adapter
        self._client = client
        self._token = token
        self._chat = chat
        self._seen: list[str] = []

    async def send(self, text: str, *, group: bool = False, admin: bool = False) -> None:
        headers = {"Authorization": f"Bearer {self._token}", "Origin": "https://shop.example"}
        response = await self._client.post("/v1/messages", headers=headers, json={"text": text})
        assert response.status_code in (202, 403), response.text

    def seen(self, *, group: bool = False) -> list[str]:
        return self._seen

    async def idle(self) -> None:
        await self.adapter.idle()
        events = await self.adapter.events.read(self._chat, None)
        shown = [json.loads(e.data) for e in events if e.name in ("answer", "notice")]
        self._seen = [item["text"] for item in shown]


@asynccontextmanager
async def support_harness(
    tmp_path: Path, backend: object | None, **sections: Any
) -> AsyncIterator[SupportHarness]:
    import httpx

    from adapters.support.adapter import SupportAdapter
    from adapters.support.settings import SupportSettings

    support = {"token_secret": "contract-suite-secret-of-enough-length", **sections}
    settings = settings_for(tmp_path, "support", support=support)
    async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
        section = settings.section("support")
        assert isinstance(section, SupportSettings)
        host = host_for(app)
        adapter = SupportAdapter(host, section)
        app.intake.register("support", adapter, section.access)
        async with adapter:
            site = await adapter.sites.add_site("shop", ["https://shop.example"])
            await adapter.directory.refresh(force=True)
            transport = httpx.ASGITransport(app=host.http.app())
            async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
                made = await client.post(
                    "/v1/visitors",
                    headers={
                        "X-Parley-Site-Key": site.public_key,
                        "Origin": "https://shop.example",
                    },
                )
                visitor = made.json()
                chat = f"shop:{visitor['visitor_id']}"
                yield SupportHarness(app, adapter, client, visitor["token"], chat)
                await adapter.idle()


HARNESSES["support"] = support_harness

from tests.fake_chatwoot import chatwoot_harness  # noqa: E402  (after the harness protocol)

HARNESSES["chatwoot"] = chatwoot_harness


# The optional [discord] extra, and uvicorn's WebSocket support for the fake gateway.
if all(importlib.util.find_spec(m) is not None for m in ("discord", "websockets")):
    HARNESSES["discord"] = discord_harness
