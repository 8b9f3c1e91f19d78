"""Spoilers (`||hidden||`) in an answer on Discord showed in the clear: Discord's client hides
a spoiler only between both of its markers, and the answer is shown before the model has
written the closing one (each edit of a streaming answer shows the text so far), and in
several messages past 2,000 characters (a spoiler cut by the split had one marker in each
message). Now a spoiler left open at the end of a message is closed there, and one cut by a
split is reopened at the start of the next message; the markers added count towards the
2,000 characters. `||` in code is no spoiler (Discord shows it as written) and is left alone,
and the recorded answer is the model's text, with no marker added.

Over the real discord.py and the fake Discord REST API (tests/discord_api.py); what a reader
sees in the clear is worked out from each message as Discord renders it (`in_the_clear`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("discord")
pytest.importorskip("websockets")

from adapters.discord.stream import (
    MAX_MESSAGE,
    close_spoiler,
    neutralise,
    reopen_spoiler,
    settle_spoiler,
)
from adapters.kit.split import Splitter, split_text
from backends.base import Chunk, GenerationRequest
from bot.types import ConversationKey, Role
from tests import discord_events as ev
from tests.adapter_harness import DiscordHarness, discord_harness, visible
from tests.doubles import ScriptedBackend

# Discord's Markdown, as far as spoilers go: code (a closed fenced block, an inline span) shows
# as written; a spoiler runs from "||" to the next "||" (at least one character between).
_CODE_OR_SPOILER = re.compile(r"(```.*?```|(`+)[^`\n]+?\2(?!`))|\|\|(.+?)\|\|", re.S)


def in_the_clear(content: str) -> str:
    """What a reader sees of one message without clicking a spoiler."""
    return _CODE_OR_SPOILER.sub(lambda m: m.group(1) or "", content)


class PausedBackend(ScriptedBackend):
    """Streams `first`, waits for `release`, then streams `rest`: the test looks at the
    message while the answer is still being written."""

    def __init__(self, first: str, rest: str) -> None:
        super().__init__(lambda request: first + rest)
        self.parts = (first, rest)
        self.release = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        first, rest = self.parts
        yield Chunk(text=first)
        await self.release.wait()
        yield Chunk(text=rest)
        yield Chunk(finish_reason="stop")


async def _answers_in(h: DiscordHarness, chat: int) -> list[str]:
    conversation = await h.app.store.conversation_id(ConversationKey("discord", str(chat)))
    assert conversation is not None
    rows = await h.app.store.history(conversation, 100)
    return [r.content for r in rows if r.role is Role.ASSISTANT]


async def _shown_while_paused(h: DiscordHarness, backend: PausedBackend) -> str:
    """The answer's message as it shows with only `first` written, then the rest released."""
    await h.send("who did it?")
    async with asyncio.timeout(30):
        await h.api.until(lambda: bool(h.api.texts(ev.DM)))
    (partial,) = h.api.texts(ev.DM)
    backend.release.set()
    await h.idle()
    return partial


async def test_a_streaming_spoiler_stays_hidden_before_its_closing_marker(tmp_path: Path) -> None:
    backend = PausedBackend("The killer is ||the butl", "er, with the candlestick||. Enjoy!")
    async with discord_harness(tmp_path, backend) as h:
        partial = await _shown_while_paused(h, backend)
        assert partial == "The killer is ||the butl||"  # closed in what is shown
        assert "butl" not in in_the_clear(partial)
        answer = "The killer is ||the butler, with the candlestick||. Enjoy!"
        assert h.api.texts(ev.DM) == [answer]
        assert await _answers_in(h, ev.DM) == [answer]  # the model's text, nothing added


async def test_a_marker_never_closed_shows_in_the_final_message_as_discord_shows_it(
    tmp_path: Path,
) -> None:
    """Prose such as "a || b" is no spoiler to Discord, which shows it as written. While the
    answer streams the rest is hidden (the model may yet close it); the final message shows
    the marker as written (escaped), and what follows it, as the first version did not (a
    reviewer's finding: the whole rest of the answer stayed hidden)."""
    backend = PausedBackend("Use a || b to combine", " the two flags, then restart the service.")
    async with discord_harness(tmp_path, backend) as h:
        partial = await _shown_while_paused(h, backend)
        assert "combine" not in in_the_clear(partial)
        answer = "Use a || b to combine the two flags, then restart the service."
        (final,) = h.api.texts(ev.DM)
        assert final == "Use a \\|\\| b to combine the two flags, then restart the service."
        assert "restart the service" in in_the_clear(final)
        assert await _answers_in(h, ev.DM) == [answer]  # the model's text, nothing added


def test_only_a_marker_never_closed_is_escaped() -> None:
    assert settle_spoiler("a || b") == "a \\|\\| b"
    assert settle_spoiler("||x|| and ||y") == "||x|| and \\|\\|y"
    assert settle_spoiler("||x|| done") == "||x|| done"
    assert settle_spoiler("`a || b` c") == "`a || b` c"  # code: no spoiler
    assert reopen_spoiler(settle_spoiler("p ||q ||r|| s ||t")) == ""


async def test_a_lone_pipe_while_streaming_is_taken_as_the_closing_marker(tmp_path: Path) -> None:
    """Half of the closing marker written: one "|" more closes it, and the message is never
    longer as sent than it will be (the splitter's length stays growing with the text)."""
    backend = PausedBackend("It was ||the butler|", "|.")
    async with discord_harness(tmp_path, backend) as h:
        partial = await _shown_while_paused(h, backend)
        assert partial == "It was ||the butler||"
        assert h.api.texts(ev.DM) == ["It was ||the butler||."]


async def test_a_streaming_code_block_keeps_its_pipes(tmp_path: Path) -> None:
    """`||` in code is a shell's "or", shown as written: no marker is added to it, even while
    its closing fence is still to come."""
    backend = PausedBackend("Run:\n```sh\nmake || tr", "ue\n```\nand `a || b` too.")
    async with discord_harness(tmp_path, backend) as h:
        partial = await _shown_while_paused(h, backend)
        assert partial == "Run:\n```sh\nmake || tr"
        answer = "Run:\n```sh\nmake || true\n```\nand `a || b` too."
        assert h.api.texts(ev.DM) == [answer]


async def test_a_spoiler_cut_by_the_split_is_hidden_in_both_messages(tmp_path: Path) -> None:
    # The cut falls in the spoiler, at a space as near 2,000 characters as it may: the
    # closing marker added must still fit (Discord answers 400 past 2,000).
    # Counted without the marker, the first piece would end at a space at character 1,999.
    secret = "secret " * 400
    answer = "Open. " * 16 + f"Now: ||{secret.strip()}||\n\nThat was it, `x || y` aside."
    async with discord_harness(tmp_path, ScriptedBackend(lambda r: answer)) as h:
        await h.send("tell me")
        await h.idle()
        shown = h.api.texts(ev.DM)
        assert len(shown) >= 2 and all(len(m) <= MAX_MESSAGE for m in shown)
        assert [c for c in h.api.calls if c.status not in (200, 204)] == []
        assert max(len(m) for m in shown) >= MAX_MESSAGE - 8  # pieces stay large
        for message in shown:
            assert "secret" not in in_the_clear(message)
        assert shown[-1].endswith("That was it, `x || y` aside.")
        assert visible("\n".join(shown)) == visible(answer)
        assert await _answers_in(h, ev.DM) == [answer]


def test_open_spoilers_are_closed_and_code_is_left_alone() -> None:
    assert close_spoiler("a ||b") == "a ||b||"
    assert close_spoiler("a ||b||") == "a ||b||"
    assert close_spoiler("a ||") == "a ||"  # nothing to hide yet
    assert close_spoiler("a ||b|") == "a ||b||"  # its closing marker half written
    assert close_spoiler("a ||b\\|") == "a ||b\\|||"  # an escaped pipe closes nothing
    assert close_spoiler("`a || b` ||c") == "`a || b` ||c||"
    assert close_spoiler("```\nx || y\n```") == "```\nx || y\n```"
    assert close_spoiler("```sh\nx ||") == "```sh\nx ||"  # a fence still open is code
    assert close_spoiler("see `x ||") == "see `x ||"  # an inline span still being written
    assert close_spoiler("\\||a") == "\\||a"  # an escaped marker
    assert reopen_spoiler("a ||b") == "||" and reopen_spoiler("a ||b|| c") == ""


def test_a_longer_text_is_never_shorter_as_sent() -> None:
    """The splitter's binary search needs the length as sent to grow with the text."""
    text = (
        "One ||two|| `a || b` ||three|four ||| five\n```\nx || y\n```\n||six @everyone"
        " \\|| ||||| https://example.com/a|| `x ||"
    )
    prefixes = [text[:n] for n in range(len(text) + 1)]
    lengths = [len(neutralise(close_spoiler(p), bracket_links=True)) for p in prefixes]
    assert lengths == sorted(lengths)


def test_the_splitter_reopens_what_a_piece_leaves_open() -> None:
    splitter = Splitter(40, length=lambda p: len(close_spoiler(p)), reopen=reopen_spoiler)
    pieces = splitter.split("Plain words here. ||a hidden text that runs on and on|| done.")
    assert all(len(close_spoiler(p)) <= 40 for p in pieces)
    assert len(pieces) >= 2 and pieces[1].startswith("||")
    assert all(in_the_clear(close_spoiler(p)).count("hidden") == 0 for p in pieces)


def sent_length(piece: str) -> int:
    return len(neutralise(close_spoiler(piece), bracket_links=True))


def test_a_spoiler_around_a_long_code_block_keeps_the_block_whole_in_each_piece() -> None:
    """The spoiler opens again on a line of its own, before the code block's fence opened
    again (a fence starts its line); a piece is never the spoiler's marker alone. (Its code
    has no "||": Discord ends a spoiler at the first "||" after it, in code or not.)"""
    code = "\n".join(f"x_{i} = {i} or {i + 1}" for i in range(60))
    for before in ("", "Hidden: "):
        text = f"{before}||\n```py\n{code}\n```\n|| done"
        pieces = split_text(text, 300, length=sent_length, reopen=reopen_spoiler)
        assert all(sent_length(p) <= 300 for p in pieces)
        if before:  # the marker with nothing after it yet goes on with the code
            assert pieces.pop(0) == before.strip()
        assert len(pieces) >= 4
        for piece in pieces:
            assert piece.startswith("||\n```py\n")
        for piece in pieces[:-1]:
            shown = close_spoiler(piece)
            assert shown.endswith("\n```||") and in_the_clear(shown) == ""


PARTS = ["||", "|", "word ", "secret words. ", "\n", "\n\n", "```py\n", "\n```\n", "`"]
PARTS += ["`x || y`", "https://example.com/a ", "@here ", "\\|"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(PARTS),
        min_size=1,
        max_size=150,
    ),
    st.integers(40, 200),
)
def test_every_piece_fits_as_sent(parts: list[str], limit: int) -> None:
    """Closing markup at a piece's end makes the length as sent not quite additive: a piece
    is still never longer than the limit, nor blank."""
    for text in ("".join(parts), settle_spoiler("".join(parts))):  # streamed, and final
        pieces = split_text(text, limit, length=sent_length, reopen=reopen_spoiler)
        assert all(sent_length(p) <= limit and p.strip() for p in pieces)


async def test_a_spoiler_open_when_the_token_expires_stays_hidden_after_it(tmp_path: Path) -> None:
    """A slash command's answer past its token's 15 minutes goes on in a channel message,
    from where the response stopped: a spoiler open there is opened again."""
    backend = PausedBackend("The answer is ||the crane lifted ", "the tea||, and that is all.")
    async with discord_harness(tmp_path, backend) as h:
        slash = ev.interaction_create("summarize", "The crane moved the tea. " * 8)
        await h.command(slash)
        async with asyncio.timeout(30):
            await h.api.until(lambda: bool(h.api.texts(ev.DM)) and bool(h.api.texts(ev.DM)[0]))
        h.api.expire(slash["token"])  # 15 minutes later, as far as Discord is concerned
        backend.release.set()
        await h.idle()
        original, *more = h.api.texts(ev.DM)
        assert original == "The answer is ||the crane lifted||"
        assert more == ["||the tea||, and that is all."]
        assert all("crane" not in in_the_clear(m) and "tea" not in in_the_clear(m) for m in more)


def test_a_piece_fits_as_sent_when_its_code_block_closing_opens_a_spoiler() -> None:
    """A fence closed on its code's line ("x```") is closed to Discord, not to markdown-it:
    the splitter cuts it as an open block and adds a closing fence, after which a "||" left
    empty at the window's end is a spoiler to close (2 more characters: 2,001, Discord's
    400, nothing shown; a reviewer's property check)."""
    for size in range(1975, 1995):
        text = "```py\n" + "e" * size + "``` ||hidden things|| more"
        pieces = split_text(text, MAX_MESSAGE, length=sent_length, reopen=reopen_spoiler)
        assert all(sent_length(p) <= MAX_MESSAGE for p in pieces), size
