"""Hostile review of the Discord adapter: a slash command's long answer where the bot may
answer interactions but not post in the channel (Discord needs no channel permission for an
interaction's response and follow-ups)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("discord")
pytest.importorskip("websockets")

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests import discord_api
from tests import discord_events as ev
from tests.adapter_harness import discord_harness, visible
from tests.discord_api import MAX_CONTENT, Call, FakeDiscordApi
from tests.doubles import ScriptedBackend

NO_PERMISSION = {"message": "Missing Permissions", "code": 50013}


class SlashOnlyApi(FakeDiscordApi):
    """Discord where the bot lacks Send Messages in ev.CHANNEL; follow-up messages (the
    interaction's webhook) need no permission, as on Discord."""

    async def _send(self, request: Request) -> Response:
        if request.path_params["channel"] == ev.CHANNEL:
            body = await request.json()
            self._record(Call("POST", request.url.path, ev.CHANNEL, body, 403))
            return JSONResponse(NO_PERMISSION, status_code=403)
        return await super()._send(request)


async def test_a_long_slash_answer_reaches_a_channel_the_bot_cannot_post_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_api, "FakeDiscordApi", SlashOnlyApi)
    answer = "Short version: " + "the crane lifted the tea. " * 200
    async with discord_harness(tmp_path, ScriptedBackend(lambda request: answer)) as h:
        await h.command(ev.interaction_create("summarize", "The tea. " * 8, channel=ev.CHANNEL))
        await h.idle()
        shown = h.api.texts(ev.CHANNEL)
        assert len(shown) >= 2 and all(0 < len(m) <= MAX_CONTENT for m in shown)
        assert visible("\n".join(shown)) == visible(answer.strip())
        assert not [c for c in h.api.calls if c.status == 403]
