"""Hostile review of the chat adapters (Telegram and Discord) and the kit: each test failed on
the code it fixes."""

from __future__ import annotations

import re

import pytest

from adapters.kit.split import split_text
from adapters.telegram.formatting import to_html, to_text, utf16_len

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
