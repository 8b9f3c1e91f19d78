"""Hostile review of the chat adapters (Telegram and Discord) and the kit: each test failed on
the code it fixes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from telegram import Bot

from adapters.kit.split import split_text
from adapters.kit.streamer import Pacing, Streamer
from adapters.telegram.formatting import to_html, to_text, utf16_len
from adapters.telegram.split import MAX_MESSAGE
from adapters.telegram.stream import Target, TelegramSurface
from tests.telegram_api import TOKEN, UNLIMITED, FakeBotApi, Limits

GROUP = -1001

# Telegram finds mentions in the whole text of a message, whatever bold, italic, underline,
# strikethrough or spoiler covers it (tdlib merges new entities only with the "continuous"
# ones: code, pre, text links): "@" and then an italic "alice" is "@alice", a mention.
_MENTION = re.compile(r"(?<!\w)@[A-Za-z0-9_]")


@pytest.mark.parametrize(
    "markdown",
    [
        "Ask @*alice_k* about it.",
        "Ask @**alice_k** about it.",
        "Ask @_alice_k_ about it.",
        "Ask @~~alice_k~~ about it.",
        "Ask @***bob_99*** and @**_bob_99_** too.",
        "Ask @__alice_k__ about it.",  # a Python name's underscores are shown as typed
        "Ask @[alice_k](tg://user?id=1) about it.",  # shown as its text alone
        "Ask [@](/members)alice_k about it.",
        "Ask @![alice_k](https://example.com/a.png) about it.",  # an image: its text
    ],
)
def test_an_at_sign_before_emphasis_pings_no_member_of_a_telegram_group(markdown: str) -> None:
    html = to_html(markdown)
    outside_code = re.sub(r"<code>.*?</code>|<a [^>]*>.*?</a>", "", html)
    assert _MENTION.search(to_text(outside_code)) is None, html


# A character that joins the one before it (a combining mark, a zero-width joiner, a
# variation selector, a skin tone), repeated past a message's limit: the hard cut moved back
# to the start of the run every time, so every piece was one character and the answer became
# hundreds of messages (a flood of the chat, its rate budget and the conversation's turn).
@pytest.mark.parametrize(
    "run",
    [
        "a" + "\u0301" * 5000,  # "Zalgo" text: one letter and its marks
        "\u200d" * 5000,  # invisible
        "👍" + "\U0001f3fb" * 3000,
        "see: " + "x" + "\ufe0f" * 5000,
    ],
)
def test_a_run_of_joining_characters_is_cut_at_the_limit_not_into_single_characters(
    run: str,
) -> None:
    for limit, length in ((2000, len), (4096, utf16_len)):
        pieces = split_text(run, limit, length=length)
        assert "".join(pieces) == run.replace(" ", "")
        assert len(pieces) <= length(run) // limit + 2, [len(p) for p in pieces[:5]]


@pytest.mark.parametrize(
    "markdown",
    [
        "Ask [`@alice_k`](tg://user?id=1) about it.",
        "Ask [`@alice_k`](/members/alice) about it.",
        "Ask [`@alice_k`](mailto:alice@example.com) about it.",
    ],
)
def test_code_in_a_link_that_is_not_shown_as_one_pings_no_member(markdown: str) -> None:
    """Code in a link is written without <code> (Telegram nests nothing in it); a link that
    is not http(s) is shown as its text only, so its code stood bare: "@alice_k", a mention."""
    html = to_html(markdown)
    outside_code = re.sub(r"<code>.*?</code>", "", html)  # code mentions no one
    assert _MENTION.search(to_text(outside_code)) is None, html


class _Watched(TelegramSurface):
    """The Telegram surface, telling the test when the streamer has looked at a piece."""

    def __init__(self, bot: Bot, target: Target) -> None:
        super().__init__(bot, target)
        self.looked = asyncio.Event()

    def shows(self, piece: str) -> bool:
        self.looked.set()
        return super().shows(piece)


@pytest.mark.parametrize("mark", ["\u200f", "\u200b", "\ufeff", "\u2800", "\u202b", "\u202a"])
async def test_an_answer_that_opens_with_an_invisible_mark_is_shown(mark: str) -> None:
    """Telegram takes a text of direction marks, zero-width characters, a byte order mark or
    the Braille blank for empty ("message text is empty", as HTML and as plain text): the
    answer's first update, the model's first token alone (a right-to-left mark before Hebrew
    or Arabic), was refused, and the refusal ended the showing of the whole answer."""
    api = FakeBotApi(Limits((UNLIMITED, 1.0), (UNLIMITED, 1.0), (UNLIMITED, 1.0)))
    async with api.serving() as base_url, Bot(TOKEN, base_url=base_url) as bot:
        surface = _Watched(bot, Target(GROUP, None))

        async def model() -> AsyncIterator[str]:
            yield mark
            await surface.looked.wait()  # the streamer has tried to show the mark alone
            yield "שלום, this is the answer."

        await Streamer(surface, Pacing(0.0, MAX_MESSAGE, utf16_len)).play(model())
    assert api.texts(GROUP) == [mark + "שלום, this is the answer."]


@pytest.mark.parametrize("before", ["", "print(1)\n"])
def test_a_run_of_joining_characters_in_code_stays_code(before: str) -> None:
    """In a code block the run starts after the fence's line, not at the window's start: the
    cut moved back to it, found no code to keep, and the block was cut like text, so a piece
    was the fence alone ("```py") and the run went out as text, out of its code block."""
    run = "e" + "\u0301" * 5000
    pieces = split_text(f"```py\n{before}{run}\n```", 2000)
    assert all(p.startswith("```py\n") and p.endswith("\n```") for p in pieces), [
        p[:8] for p in pieces
    ]
    assert len(pieces) <= len(run) // 2000 + 3
