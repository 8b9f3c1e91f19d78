"""Hostile review of the text building blocks: a pasted text (up to skills.max_paste_chars,
400,000 characters) goes through language detection and, for /translate, `protect`, on the
event loop. Each test failed on the code it fixes."""

from __future__ import annotations

import random
import string
import sys
import tracemalloc
from types import FrameType
from typing import Any

import pytest

from bot.text import patterns, protect, restore, split_sentences, summarize_extractive

PROTECT_FILE = sys.modules["bot.text.protect"].__file__


def lines_run_in_protect(text: str) -> int:
    """Lines of bot/text/protect.py executed by protect(text): its work, counted, not timed."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != PROTECT_FILE:
            return None
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()  # a coverage tool's, if one runs: put back afterwards
    sys.settrace(tracer)
    try:
        protect(text)
    finally:
        sys.settrace(previous)
    return count


def test_protect_takes_its_spans_in_one_pass() -> None:
    """Each span was checked against every span taken before it: a paste with a hashtag,
    mention or emoji every few characters (130,000 of them in 400,000 characters) kept the
    event loop, and every conversation on it, busy for minutes. Twice the spans must cost
    about twice the work, not four times."""
    small = lines_run_in_protect("#tag @name 🎉 " * 500)
    large = lines_run_in_protect("#tag @name 🎉 " * 1000)
    assert large < 2.5 * small


# Texts on which each of these patterns searched the rest of the text again from every word
# (every "<!--", every run of backticks): each took about a minute here (and minutes for the
# longest paste, 400,000 characters, for the first three); under a second now.
QUADRATIC = {
    "URL": "a." * 64_000,
    "EMAIL": "a." * 150_000,
    "HTML_TAG": "<!--" * 75_000,
    "INLINE_CODE": "".join("`" * k + "a" for k in range(1, 1790)),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(QUADRATIC))
def test_a_long_paste_is_searched_in_one_pass(name: str) -> None:
    assert list(getattr(patterns, name).finditer(QUADRATIC[name])) == []


@pytest.mark.parametrize(
    ("text", "kind", "found"),
    [
        ("see https://example.org/a_(b) now", "URL", "https://example.org/a_(b)"),
        ("open www.example.org.", "URL", "www.example.org"),
        ("mail ada.lovelace+x@example.co.uk today", "EMAIL", "ada.lovelace+x@example.co.uk"),
        ("a <!-- note --> b", "HTML_TAG", "<!-- note -->"),
    ],
)
def test_the_bounded_patterns_still_find_what_they_found(text: str, kind: str, found: str) -> None:
    match = getattr(patterns, kind).search(text)
    assert match is not None and match.group(0) == found


def test_protect_and_restore_still_round_trip_a_busy_text() -> None:
    text = "Hi @ada, see https://x.org/(a) #news 🎉🎉 `code` <b>bold</b> &amp; a@b.io " * 50
    protected = protect(text)
    assert restore(protected.text, protected).text == text
    assert [s.text for s in protected.spans[:8]] == [
        "@ada", "https://x.org/(a)", "#news", "🎉🎉", "`code`", "<b>", "</b>", "&amp;",
    ]  # fmt: skip


@pytest.mark.timeout(30)  # 200,000 characters: under a second now, minutes before
def test_a_long_paragraph_is_split_into_sentences_in_one_pass() -> None:
    """Each sentence end looked for the word before it with a search from the paragraph's
    start: a paste of one long paragraph took minutes."""
    assert len(split_sentences("Ab. " * 50_000)) == 50_000


def test_a_long_text_is_summarised_without_a_model_in_bounded_memory() -> None:
    """Without a model, /summarize (and a document sent for a summary) ranks the sentences
    with TextRank: its matrices grew with the square of the sentences and with the whole
    vocabulary, about 650 MB for these 65,000 characters and tens of gigabytes for a
    200,000-character document, enough for the kernel to kill the process; the message then
    stayed pending and killed it again at every start."""
    rng = random.Random(7)

    def word() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(5))

    text = " ".join(f"{word().title()} {word()} {word()}." for _ in range(3_400))
    tracemalloc.start()
    try:
        summary = summarize_extractive(text, max_sentences=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.count("\n- ") == 4
    assert peak < 64 * 2**20
