"""Markdown -> Telegram HTML, and splitting long answers at 4096 characters."""

from __future__ import annotations

import random
import re

import pytest

from adapters.telegram.formatting import to_html, to_text
from adapters.telegram.split import MAX_MESSAGE, split_message, utf16_len
from tests.telegram_api import _HtmlChecker


def words(n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(rng.choice(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]))
        if i % 13 == 12:
            out[-1] += "."
        if i % 91 == 90:  # a paragraph ends with a sentence
            out[-1] += "\n\n"
    return " ".join(out)


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("**bold** _it_ *it* ~~gone~~", "<b>bold</b> <i>it</i> <i>it</i> <s>gone</s>"),
        ("use `x<y` here", "use <code>x&lt;y</code> here"),
        ("[site](https://e.com/?a=1&b=2)", '<a href="https://e.com/?a=1&amp;b=2">site</a>'),
        ("# Title\n- item", "<b>Title</b>\n• item"),
        (
            "```python\nif a < b:\n    pass\n```",
            '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>',
        ),
        ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
        ("2 * 3 * 4 and snake_case_name", "2 * 3 * 4 and snake_case_name"),
        ("**a *b** c*", "<i><i>a <i>b</i></i> c</i>"),  # CommonMark's reading
    ],
)
def test_markdown_to_telegram_html(markdown: str, html: str) -> None:
    assert to_html(markdown) == html
    _HtmlChecker.text_of(html)  # Telegram would accept it


def test_random_markdown_always_nests() -> None:
    rng = random.Random(3)
    pieces = [
        "**",
        "*",
        "_",
        "`",
        "~~",
        "[x](https://a.b)",
        "<",
        ">",
        "&",
        " word ",
        "\n",
        "```\n",
        "# ",
    ]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(30))
        html = to_html(text)
        visible = _HtmlChecker.text_of(html)
        assert len(visible) <= len(text)


def test_short_text_is_one_message() -> None:
    assert split_message("  hello  ") == ["hello"]


def test_long_text_splits_on_paragraphs_then_sentences() -> None:
    text = words(3000)
    parts = split_message(text)
    assert len(parts) > 3
    assert all(utf16_len(p) <= MAX_MESSAGE for p in parts)
    assert squash(" ".join(parts)) == squash(text)
    assert all(p.endswith(".") for p in parts[:-1])  # a paragraph or sentence end


def test_a_code_block_is_never_cut_when_it_fits() -> None:
    code = "```sh\n" + "\n".join(f"echo {i}" for i in range(300)) + "\n```"
    text = words(500) + "\n\n" + code + "\n\n" + words(100, seed=2)
    parts = split_message(text)
    assert len(parts) > 1 and any(code in p for p in parts)
    for part in parts:
        assert part.count("```") % 2 == 0


def test_a_code_block_longer_than_a_message_is_refenced() -> None:
    code = "```py\n" + "\n".join(f"x = {i} * {i}" for i in range(1200)) + "\n```"
    parts = split_message(code)
    assert len(parts) > 1
    for part in parts:
        assert part.startswith("```py\n") and part.endswith("```")
        assert utf16_len(to_text(to_html(part))) <= MAX_MESSAGE
    lines = [line for p in parts for line in p.split("\n") if not line.startswith("```")]
    assert lines == [f"x = {i} * {i}" for i in range(1200)]


def test_length_counts_utf16_units() -> None:
    text = "😀" * 3000  # two units each
    parts = split_message(text)
    assert [utf16_len(p) for p in parts] == [4096, 1904]


def test_pieces_of_a_growing_text_never_change() -> None:
    text = words(2500) + "\n\n```\n" + "line\n" * 900 + "```\n" + words(300)
    final = split_message(text)
    for end in range(0, len(text), 997):
        complete = split_message(text[:end])[:-1]  # the last piece may still grow
        assert complete == final[: len(complete)]


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("***x***", "<i><b>x</b></i>"),  # the regexes left "*x*"
        ("**bold `code` here**", "<b>bold <code>code</code> here</b>"),  # they kept the **
        ("edit __init__.py now", "edit __init__.py now"),  # they showed a bold "init".py
        ("__main__ and __bold words__", "__main__ and <b>bold words</b>"),
        ("> quoted\n> > nested", "<blockquote>quoted\nnested</blockquote>"),  # quotes don't nest
        ("1. one\n2. two\n   - sub", "1. one\n2. two\n  • sub"),
        ("| a | b |\n|---|---|\n| 1 | 22 |", "<pre>a | b\n1 | 22</pre>"),
        (
            "[x](javascript:alert(1)) <https://a.b>",
            '[x](javascript:alert(1)) <a href="https://a.b">https://a.b</a>',
        ),
        ("<b>raw</b>", "&lt;b&gt;raw&lt;/b&gt;"),
        ("---", "———"),
    ],
)
def test_commonmark_rendering(markdown: str, html: str) -> None:
    assert to_html(markdown) == html
    _HtmlChecker.text_of(html)


@pytest.mark.parametrize("markdown", ["```", "```python\n", "> ", "#", "[a]: https://x.y"])
def test_markup_alone_renders_to_nothing_visible(markdown: str) -> None:
    """Telegram refuses such a message (400 "message text is empty"): the streamer waits
    for more text, or sends the piece as plain text (tests/test_telegram_stream.py)."""
    assert to_text(to_html(markdown)).strip() == ""


def test_an_empty_fence_keeps_the_words_after_it() -> None:
    """ "``` See you." opens a fence whose info string is the words; with nothing after it the
    block was dropped and the words with it (a helper's review)."""
    assert "See you." in to_html("Here:\n```python\nprint(1)\n``` See you.")  # in the block
    assert to_html("``` See you.") == "See you."
    assert to_html("```\n```") == ""
