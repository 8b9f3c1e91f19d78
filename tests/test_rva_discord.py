"""Hostile review of the Discord adapter: a message its sender deletes while its turn runs.
Real discord.py against the local fake of Discord (tests/discord_api.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

pytest.importorskip("discord")
pytest.importorskip("websockets")

from adapters.discord.adapter import DiscordAdapter
from adapters.discord.settings import DiscordSettings
from adapters.kit.gate import Rate, Rates
from adapters.kit.runner import host_for
from bot.app import Parley
from bot.types import ConversationKey, Role
from tests import discord_events as ev
from tests.adapter_harness import DiscordHarness, settings_for
from tests.discord_api import TOKEN, Call, FakeDiscordApi
from tests.test_discord_backfill import WAIT_S, HeldBackend, fake_discord, started

SECRET_TEXT = "my card number is 4111 1111 1111 1111"


async def test_rva_text_deleted_while_its_turn_runs_never_reaches_a_later_prompt(
    tmp_path: Path,
) -> None:
    """The sender deletes a message while the model answers it: `store.withdraw` replaces its
    text in SQL by a stub, but the finished turn appends the deleted text to the cached
    context window, and the next turn's prompt carries it to the model."""
    backend = HeldBackend("Noted.")
    async with started(tmp_path, backend, fake_discord()) as h:
        first = ev.message_create(SECRET_TEXT)
        await h.deliver_event(first)
        async with asyncio.timeout(WAIT_S):
            await backend.started.wait()  # its turn runs
        h.api.delete(ev.DM, int(first["id"]))
        async with asyncio.timeout(WAIT_S):
            await h.adapter.deleted(1)
        backend.release.set()
        await h.idle()
        conversation = await h.app.store.conversation_id(ConversationKey("discord", str(ev.DM)))
        assert conversation is not None
        rows = await h.app.store.history(conversation, 10)
        assert SECRET_TEXT not in [r.content for r in rows if r.role is Role.USER]  # SQL: gone
        await h.deliver_event(ev.message_create("and now?"))
        await h.idle()
        later = backend.requests[-1]
        assert "and now?" in str(later.messages[-1].content)
        assert all("4111 1111" not in str(m.content) for m in later.messages)


class DeletingFakeDiscord(FakeDiscordApi):
    """The fake Discord, which also takes DELETE of an interaction's response (Discord: 204)."""

    def app(self) -> Starlette:
        app = super().app()
        path = "/api/v10/webhooks/{app:int}/{token}/messages/@original"
        app.add_route(path, self._delete_original, methods=["DELETE"])
        return app

    async def _delete_original(self, request: Request) -> Response:
        token = request.path_params["token"]
        channel = self.interactions[token][0]
        self._record(Call("DELETE", request.url.path, channel, {}))
        self.messages[channel].pop(self._originals[token], None)
        return Response(status_code=204)


@asynccontextmanager
async def with_core(tmp_path: Path, backend: object | None, **core: Any) -> AsyncIterator[Any]:
    """The Discord adapter against the fake Discord, with core settings `core`."""
    api = DeletingFakeDiscord(per_channel=(5, 0.5), guilds=[ev.guild_create()])
    rates = Rates(per_chat=Rate(5, 0.5), overall=Rate(50, 1.0))
    async with api.serving():
        section_data = {"token": TOKEN, "stream_interval_s": 0.05, "backfill_hours": 0}
        settings = settings_for(tmp_path, "discord", discord=section_data, **core)
        async with Parley(settings, backend=backend) as app:  # type: ignore[arg-type]
            section = settings.section("discord")
            assert isinstance(section, DiscordSettings)
            adapter = DiscordAdapter(host_for(app), section, rates=rates, store=app.store)
            app.intake.register("discord", adapter, section.access)
            async with adapter:
                connection = asyncio.create_task(adapter.run())
                try:
                    harness = DiscordHarness(app, adapter, api)
                    yield harness
                    await harness.idle()
                finally:
                    connection.cancel()
                    await asyncio.gather(connection, return_exceptions=True)


async def test_rva_every_slash_command_gets_its_response(tmp_path: Path) -> None:
    """A slash command is deferred at once ("Parley is thinking..."); one the core then
    settled without a word (over the rate limit, after the one sentence saying so) had to
    end that, or Discord showed "thinking" until "The application did not respond". One over
    the rate limit is now answered at once, to its sender alone (an ephemeral response, each
    time): none is left "thinking", and none has a response to delete."""
    async with with_core(tmp_path, None, conversation={"rate_limit_messages": 1}) as h:
        commands = [ev.interaction_create("help") for _ in range(3)]
        for command in commands:
            await h.command(command)
            await h.idle()
        await h.adapter.settled()
        shown = h.api.texts(ev.DM)
        assert len(shown) == 1 and "/help" in shown[0], shown
        told = [h.api.ephemeral.get(c["token"], "") for c in commands[1:]]
        assert all("too quickly" in t for t in told), told
        assert sorted(h.api.acknowledged) == sorted(c["token"] for c in commands)
        assert not [c for c in h.api.calls if c.method == "DELETE"]
