"""Hostile review of the chat adapters (Telegram and Discord) and the kit: each test failed on
the code it fixes."""

from __future__ import annotations

import re

import pytest

from adapters.telegram.formatting import to_html, to_text

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
    ],
)
def test_an_at_sign_before_emphasis_pings_no_member_of_a_telegram_group(markdown: str) -> None:
    assert _MENTION.search(to_text(to_html(markdown))) is None
