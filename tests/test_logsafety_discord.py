"""Logs without secrets at DEBUG on Discord: a slash command answered through the Discord
stand-in, logged as `parley run --verbose` logs (every library's DEBUG lines, the log-safety
filter on the handler). discord.py logs each call it makes for an interaction (its
acknowledgement, the deferred answer) with the URL, and that URL carries the interaction's
token, which lets whoever holds it answer and edit as the bot in that channel for 15 minutes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("discord")
pytest.importorskip("websockets")

from bot import logsafety
from tests import discord_events as ev
from tests.adapter_harness import discord_harness
from tests.discord_api import TOKEN
from tests.doubles import ScriptedBackend
from tests.test_logsafety import captured_debug_log

CANARY = "SECRETUSERTEXT123"


async def test_a_slash_command_at_debug_logs_no_interaction_token_and_no_text(
    tmp_path: Path,
) -> None:
    backend = ScriptedBackend(lambda _: "All good.")
    with captured_debug_log(safe=True, secrets=[TOKEN]) as (log, names):
        async with discord_harness(tmp_path, backend) as h:
            slash = ev.interaction_create("summarize", f"The crane moved {CANARY}. " * 5)
            await h.command(slash)
            await h.idle()
            assert h.api.texts(ev.DM) == ["All good."]
    text = log.getvalue()
    assert text, "nothing was logged: the test would prove nothing"
    # discord.py did log its calls for this interaction; they were cut.
    assert any(n.startswith("discord.webhook") for n in names)
    assert slash["token"] not in text
    assert CANARY not in text and TOKEN not in text
    # DEBUG lines that carry neither are still there.
    assert "DEBUG discord.client: Dispatching event" in text


def test_an_interaction_token_in_a_kept_line_is_redacted() -> None:
    """A warning or an error is kept whatever logs it; a token in its URL is not."""
    safety = logsafety.LogSafetyFilter([TOKEN])
    for url in (
        "https://discord.com/api/v10/interactions/1579/aW50ZXJhY3Rpb24.tok-en_1/callback",
        "https://discord.com/api/v10/webhooks/901/aW50ZXJhY3Rpb24.tok-en_1/messages/@original",
    ):
        record = logging.LogRecord("discord.webhook.async_", logging.WARNING, "", 0,
                                   "POST %s failed", (url,), None)  # fmt: skip
        assert safety.filter(record)
        assert (
            record.getMessage()
            == "POST " + url.replace("aW50ZXJhY3Rpb24.tok-en_1", "***") + " failed"
        )
