"""Fuzzed model answers (code blocks, quotes, lists, tables, emphasis, emoji and other astral
characters, at the start, the end and across message splits), rendered and streamed through
the real Telegram streamer to the stand-in Bot API, which checks text the way Telegram does."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telegram import Bot

from adapters.telegram.formatting import to_html, to_text, utf16_len
from adapters.telegram.split import MAX_MESSAGE, split_message
from adapters.telegram.stream import ReplyStream, Target
from tests.telegram_api import FakeBotApi, _HtmlChecker, unlimited_bot

WORDS = st.sampled_from(["alpha", "beta", "Gamma", "δέλτα", "😀", "👨\u200d👩\u200d👧", "𝔄x", "42"])


@st.composite
def phrase(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORDS, min_size=1, max_size=6))
    style = draw(
        st.sampled_from(
            ["{}", "**{}**", "*{}*", "***{}***", "_{}_", "~~{}~~", "`{}`", "**{} `code`**"]
        )
    )
    return style.format(" ".join(words))


@st.composite
def block(draw: st.DrawFn) -> str:
    text = " ".join(draw(st.lists(phrase(), min_size=1, max_size=4)))
    kind = draw(st.integers(0, 13))
    lines = draw(st.integers(1, 6))
    lang = draw(st.sampled_from(["", "python", "c++"]))
    return [
        text + ".",
        f"# {text}",
        "\n".join(f"- {text}" for _ in range(lines)),
        "\n".join(f"{n}. {text}" for n in range(1, lines + 1)),
        "- outer\n  - inner " + text,
        "\n".join(f"> {text}" for _ in range(lines)),
        f"```{lang}\n" + "\n".join(f"x = {n}  # {text}" for n in range(lines)) + "\n```",
        "~~~\n" + text + "\n~~~",
        "| a | b |\n|---|:-:|\n" + "\n".join(f"| {text} | {n} |" for n in range(lines)),
        "```",  # a bare fence, as a model's first chunk or last line
        "> ",
        "#",
        "see __init__.py and [the docs](https://example.com/a_b) & <b>not html</b>",
        " ".join([text] * 60),  # a long paragraph: splits inside it
    ][kind]


answers = st.lists(block(), min_size=1, max_size=12).map("\n\n".join)


def essence(text: str) -> str:
    """The answer's words without markup or layout: letters, digits and astral characters.
    List numbers are markup too: a list cut in two is numbered from where each piece starts."""
    words = re.sub(r"(?m)^[ \t]*\d+\. ", "", text)
    return "".join(ch for ch in words if ch.isalnum() or ord(ch) > 0xFFFF)


@settings(max_examples=300, deadline=None)
@given(st.one_of(answers, st.text(alphabet="*_`~#>-|[]()!\\<&;\n 1.x😀", max_size=80)))
def test_rendering_is_always_valid_and_never_longer(markdown: str) -> None:
    html = to_html(markdown)
    visible = _HtmlChecker.text_of(html)  # known tags, balanced, Telegram's nesting rules
    assert visible == to_text(html)
    assert len(visible) <= len(markdown) and utf16_len(visible) <= utf16_len(markdown)


_chats = itertools.count(1)


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[FakeBotApi, Bot]]:
    async with unlimited_bot() as pair:
        yield pair


async def chunked(text: str, cuts: list[int]) -> AsyncIterator[str]:
    """The answer in chunks cut anywhere, each in a turn of the loop of its own, as a model's
    arrive (so the streamer shows partial texts too)."""
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    for start, end in itertools.pairwise(bounds):
        if end > start:
            yield text[start:end]
            await asyncio.sleep(0)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    answers,
    st.lists(st.integers(0, 10**6), max_size=25),
    st.sampled_from([120, 400, MAX_MESSAGE]),
    st.booleans(),
)
async def test_streamed_answers_always_reach_the_user_whole_and_valid(
    stand_in: tuple[FakeBotApi, Bot], answer: str, cuts: list[int], limit: int, drafts: bool
) -> None:
    api, bot = stand_in
    chat = next(_chats)
    stream = ReplyStream(bot, Target(chat, None), interval_s=0.0, drafts=drafts, limit=limit)
    await stream.play(chunked(answer, cuts))
    calls = [c for c in api.calls if c.params.get("chat_id") == chat]
    assert calls
    # Nothing was refused: every update non-empty, valid, within 4096 after parsing, changed.
    assert [c.error for c in calls if c.status != 200] == []
    shown = api.texts(chat)
    pieces = split_message(answer, limit)
    assert len(shown) == len(pieces)
    assert all(text.strip() and utf16_len(text) <= MAX_MESSAGE for text in shown)
    assert all(draft.strip() for draft in api.drafts[chat])
    assert essence("\n".join(shown)) == essence(to_text(to_html(answer)))
