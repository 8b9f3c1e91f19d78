"""Hostile review of the kit's split: a long paragraph is not cut inside a bold span or a
link when the window has a cut outside them (each piece is rendered on its own)."""

from __future__ import annotations

import pytest

from adapters.kit.split import split_text
from adapters.telegram.formatting import to_html

PLAIN = "Plain words go here. "


@pytest.mark.parametrize("limit", [2000, 4096])
def test_rva_a_long_paragraph_is_not_cut_inside_bold(limit: int) -> None:
    """Cut at the sentence end inside **...**, both messages showed the asterisks (Discord)
    or lost the bold (Telegram), as if the model had written them."""
    before = PLAIN * (limit // len(PLAIN) - 1)
    text = before + "**Important. Read this carefully before you start, please.** " + PLAIN * 30
    pieces = split_text(text, limit)
    assert len(pieces) == 2
    assert all(piece.count("**") % 2 == 0 for piece in pieces), [p[-80:] for p in pieces]
    assert any("<b>Important. Read this" in to_html(piece) for piece in pieces)


@pytest.mark.parametrize("limit", [2000, 4096])
def test_rva_a_long_paragraph_is_not_cut_inside_a_link(limit: int) -> None:
    before = PLAIN * (limit // len(PLAIN) - 2)
    link = "[the official guide. It explains everything](https://example.org/guide)"
    text = f"{before}See {link} for details. " + "More. " * 40
    pieces = split_text(text, limit)
    assert len(pieces) == 2
    assert any(link in piece for piece in pieces), [p[-80:] for p in pieces]
    assert any('<a href="https://example.org/guide">' in to_html(piece) for piece in pieces)


def test_rva_a_paragraph_that_is_all_bold_is_still_cut_between_sentences() -> None:
    """No cut outside the span: the preference gives way (a sentence end, not a hard cut)."""
    text = "**" + "A bold sentence. " * 200 + "**"
    pieces = split_text(text, 2000)
    assert pieces[0].endswith("sentence.") and all(len(p) <= 2000 for p in pieces)


def test_rva_a_code_block_with_a_blank_line_leaves_the_text_after_it_cuttable() -> None:
    """A fence's backticks were taken for an inline code span: the closing fence of a block
    with a blank line in it "opened" a span to the end of the window, so no cut was found in
    the text after the block and a piece was cut elsewhere or re-fenced as code."""
    code = "```python\ndef a():\n    return 1\n\ndef b():\n    return 2\n```\n"
    text = code + "That is all. " + "More words here, and more. " * 10
    pieces = split_text(text, 200)
    assert pieces[0].startswith(code.strip()) and pieces[0].count("```") == 2, pieces
    assert all("```" not in piece for piece in pieces[1:]), pieces
    # The case test_telegram_render_fuzz found: prose lines were closed and re-opened as code.
    answer = (
        "```\n\n```\n" + "".join(f"x = {n}  # alpha alpha alpha alpha alpha\n" for n in range(3))
        + "```\n\nsee [the docs](https://example.com/a_b)"
    )  # fmt: skip
    first, *_ = split_text(answer, 120)
    assert first.count("```") == 2, first
