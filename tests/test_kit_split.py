"""The platform-neutral splitter: limits by the platform's own length, blocks kept whole,
code blocks re-fenced only when they are longer than a message, and pieces of a growing text
that never change."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.kit.split import Length, split_text


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def prose(n: int, seed: int) -> str:
    rng = random.Random(seed)
    words = [rng.choice(["alpha", "beta", "**gamma**", "délta", "😀", "zeta"]) for _ in range(n)]
    return " ".join(w + ("." if i % 9 == 8 else "") for i, w in enumerate(words))


def long_answer(chars: int = 20_000, seed: int = 7) -> str:
    """Paragraphs, lists and code blocks (one longer than a Telegram message)."""
    rng = random.Random(seed)
    parts: list[str] = []
    while sum(map(len, parts)) < chars:
        kind = rng.choice(["prose", "prose", "list", "code", "code"])
        if kind == "prose":
            parts.append(prose(rng.randint(20, 200), rng.randint(0, 10**6)))
        elif kind == "list":
            parts.append("\n".join(f"{i}. item {prose(6, i)}" for i in range(1, 8)))
        else:
            lines = rng.choice([5, 40, 700])
            body = "\n".join(f"    print({i} * {i})  # 🐍" for i in range(lines))
            parts.append(f"```python\n{body}\n```")
    return "\n\n".join(parts)


def fences_balanced(piece: str) -> bool:
    return len(re.findall(r"(?m)^```", piece)) % 2 == 0


@pytest.mark.parametrize(("limit", "length"), [(4096, utf16_len), (2000, len)])
def test_a_20000_character_answer_splits_within_the_limit_with_code_blocks_intact(
    limit: int, length: object
) -> None:
    answer = long_answer()
    assert len(answer) >= 20_000
    pieces = split_text(answer, limit, length=length)  # type: ignore[arg-type]
    assert len(pieces) >= 20_000 // limit
    assert all(length(p) <= limit and p.strip() for p in pieces)  # type: ignore[operator]
    assert all(fences_balanced(p) for p in pieces)
    # A block that fits in a message arrives in one piece.
    for block in [b for b in answer.split("\n\n") if b.startswith("```")]:
        if length(block) <= limit:  # type: ignore[operator]
            assert any(block in p for p in pieces)
    # Nothing is lost: the code lines, once the re-fencing is taken out, come back in order.
    code = [line for p in pieces for line in p.split("\n") if line.startswith("    print(")]
    assert code == [line for line in answer.split("\n") if line.startswith("    print(")]


def test_a_code_block_longer_than_a_message_is_reopened_with_its_fence_and_language() -> None:
    body = "\n".join(f"x = {i}" for i in range(800))
    pieces = split_text(f"~~~~rust\n{body}\n~~~~", 1000)
    assert len(pieces) > 3
    assert all(p.startswith("~~~~rust\n") and p.endswith("\n~~~~") for p in pieces)
    lines = [line for p in pieces for line in p.split("\n")[1:-1]]
    assert lines == body.split("\n")


def test_cuts_prefer_paragraph_then_line_then_sentence_then_space() -> None:
    para = "word " * 30 + "end."
    assert split_text(f"{para}\n\n{para}", 200) == [para, para]
    line = "one two three. four five six seven"
    assert split_text(f"{line}\n{line}", 40) == [line, line]
    assert split_text("First sentence here. Second one is longer", 32) == [
        "First sentence here.",
        "Second one is longer",
    ]
    assert split_text("a" * 20 + " " + "b" * 20, 32) == ["a" * 20, "b" * 20]


def test_text_then_a_long_code_block_cuts_before_the_block() -> None:
    code = "```sh\n" + "\n".join(f"echo {i}" for i in range(100)) + "\n```"
    pieces = split_text("Run this:\n" + code, 400)
    assert pieces[0] == "Run this:"
    assert all(p.startswith("```sh\n") and p.endswith("```") for p in pieces[1:])


def test_length_is_the_platforms() -> None:
    text = "😀" * 3000
    assert [utf16_len(p) for p in split_text(text, 4096, length=utf16_len)] == [4096, 1904]
    assert [len(p) for p in split_text(text, 2000)] == [2000, 1000]


def test_a_hard_cut_keeps_emoji_sequences_and_accents_whole() -> None:
    family = "👨\u200d👩\u200d👧"
    pieces = split_text(family * 40, 50)
    assert "".join(pieces) == family * 40
    assert all(p.startswith("👨") and p.endswith("👧") for p in pieces)
    accented = "e\u0301" * 40
    assert all(not p.startswith("\u0301") for p in split_text(accented, 33))


def test_chinese_and_japanese_are_cut_after_a_sentence_though_no_space_follows() -> None:
    """A 。 twenty characters before the limit was no cut: one was wanted after the mark."""
    zh = "".join(f"第{i}条：今天的会议改到下午三点，请大家准时参加。" for i in range(300))
    pieces = split_text(zh, 4096, length=utf16_len)
    assert all(p.endswith("。") for p in pieces)
    assert "".join(pieces) == zh
    ja = "「会議は三時です。」" * 300
    assert all(p.endswith("。」") for p in split_text(ja, 2000))


@pytest.mark.parametrize(("limit", "length"), [(4096, utf16_len), (2000, len)])
def test_a_hard_cut_keeps_flags_whole(limit: int, length: Length) -> None:
    """The two regional indicators of 🇩🇪 pair from the left; a tag flag (England: 🏴, the
    tags "gbeng", a cancel tag) is one sequence. A cut between them showed two letters."""
    flags = "x" + "🇩🇪🇫🇷🇯🇵" * 1000
    pieces = split_text(flags, limit, length=length)
    assert "".join(pieces) == flags
    assert all(length(p) <= limit for p in pieces)
    assert all(sum(_regional(c) for c in p) % 2 == 0 for p in pieces)
    england = "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    pieces = split_text(england * 600, limit, length=length)
    assert "".join(pieces) == england * 600
    assert all(p.startswith("🏴") and p.endswith("\U000e007f") for p in pieces)


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def test_blank_text_has_no_pieces() -> None:
    assert split_text("  \n\n ", 100) == []
    assert split_text("  hello  ", 100) == ["hello"]


markdown_blocks = st.sampled_from(
    [
        "A sentence. Another one!",
        "word " * 15,
        "- item one\n- item two\n  - nested",
        "1. first\n2. second",
        "> quoted **text**\n> more",
        "```py\nprint('x')\n\nprint('y')\n```",
        "```\n" + "line\n" * 30 + "```",
        "| a | b |\n|---|---|\n| 1 | 2 |",
        "# Heading",
        "emoji 😀👍🏽 and e\u0301",
        "```",
        "> ",
        "x" * 90,
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(markdown_blocks, min_size=1, max_size=25),
    st.sampled_from(["\n\n", "\n", " "]),
    st.integers(40, 300),
    st.data(),
)
def test_pieces_of_a_growing_text_never_change(
    blocks: list[str], joint: str, limit: int, data: st.DataObject
) -> None:
    text = joint.join(blocks)
    final = split_text(text, limit, length=utf16_len)
    assert all(utf16_len(p) <= limit and p.strip() for p in final)
    ends = data.draw(st.lists(st.integers(0, len(text)), max_size=8))
    for end in ends:
        complete = split_text(text[:end], limit, length=utf16_len)[:-1]
        assert complete == final[: len(complete)]


@pytest.mark.parametrize("unit", ["`a` ", "`a`\n", "``a`` "])
def test_many_code_spans_in_one_paragraph_are_never_cut_inside(unit: str) -> None:
    # Each position's place in code is worked out once for the window, and each paragraph's
    # end once (both were looked for again at every candidate cut: bench/markdown_split.py).
    pieces = split_text(unit * 200, 64)
    assert len(pieces) > 1 and all(len(piece) <= 64 for piece in pieces)
    assert all(piece.count("`") % 2 == 0 for piece in pieces)  # every span whole


@pytest.mark.parametrize("marker", ["-", "1.", ">"])
def test_a_list_marker_is_never_left_alone_by_a_cut_in_the_spaces_after_it(marker: str) -> None:
    # Each line's marker is read once for the window, not again at each of its spaces
    # (bench/markdown_split.py): a space right after the marker is still no cut.
    text = f"{marker}   " + "x" * 60 + " y"  # no other space in the first window
    pieces = split_text(text, 40)
    assert len(pieces) > 1 and all(len(piece) <= 40 for piece in pieces)
    assert pieces[0].startswith(f"{marker}   x") and pieces[0].strip() != marker
