"""`parley kb add` on input the database cannot keep, and on files that are not what their first
bytes say (through the real CLI, on SQLite and PostgreSQL): one line each, the run goes on."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from bot.cli import main
from bot.knowledge.loaders import load, why_no_text
from bot.text.decoding import decode_text, has_byte_order_mark


def test_a_path_too_long_to_store_fails_that_file_only(
    kb_cli_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path
    while len(deep.as_posix()) < 1100:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    (tmp_path / "a.md").write_text("# A\n\nAardvarks.\n")
    (deep / "emu.md").write_text("# Emu\n\nEmus.\n")
    (tmp_path / "z.md").write_text("# Z\n\nZebras.\n")
    status = main(
        ["kb", "add", str(tmp_path / "a.md"), str(deep / "emu.md"), str(tmp_path / "z.md")]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == "2 added, 0 updated, 0 unchanged, 1 failed\n"
    assert "the knowledge base keeps; move or rename it" in captured.err
    assert "database error" not in captured.err
    assert main(["kb", "list"]) == 0
    assert "2 documents" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("collection", "line"),
    [
        ("x" * 300, "parley: error: --collection: at most 255 characters"),
        (
            "a\x01b",
            "parley: error: --collection: control character U+0001 at character 2 cannot be stored",
        ),
    ],
)
@pytest.mark.parametrize("action", [["add"], ["list"]])
def test_a_collection_the_database_cannot_keep_is_refused_up_front(
    kb_cli_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    collection: str,
    line: str,
    action: list[str],
) -> None:
    (tmp_path / "a.md").write_text("# A\n\nAardvarks.\n")
    paths = [str(tmp_path / "a.md")] if action == ["add"] else []
    assert main(["kb", *action, "--collection", collection, *paths]) == 2
    assert capsys.readouterr().err.strip() == line
    assert main(["kb", "list"]) == 0
    assert "empty" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (
            b"\xff\xfe\xfa\x80\x81 invalid utf8 text here about zebras\n",
            "\xff\xfe\xfa\u20ac\ufffd invalid utf8 text here about zebras\n",
        ),
        (b"\xff\xfe# x", "\xff\xfe# x"),  # odd length: not UTF-16
        (b"\xff\xfe\x00\xd8a\x00", "\xff\xfe\x00\xd8a\x00"),  # a lone surrogate: not UTF-16
    ],
)
def test_a_byte_order_mark_the_bytes_do_not_bear_out_is_text(data: bytes, text: str) -> None:
    assert decode_text(data) == text
    assert not has_byte_order_mark(data)


def test_real_utf16_and_utf32_files_keep_their_mark() -> None:
    for text in ["# Zebras\n\nStriped.\n", "東京の地図\n", "\U0001f600 ok\n"]:
        assert decode_text(text.encode("utf-16")) == text
        assert decode_text(text.encode("utf-32")) == text
        assert decode_text(b"\xef\xbb\xbf" + text.encode()) == text


def test_a_utf32_mark_before_code_units_past_the_last_is_reported_as_binary() -> None:
    """FF FE 00 00 before UTF-32 code units past U+10FFFF, whose NUL bytes fall as UTF-16
    text's, was indexed as UTF-16: Latin letters, one per half unit, cited in answers."""
    from bot.knowledge.loaders import LoaderError

    units = (bytes([0x41 + n % 26, 0, 0xC0 + n % 64, 0]) for n in range(500))
    with pytest.raises(LoaderError, match="a binary file, not text"):
        load(codecs.BOM_UTF32_LE + b"".join(units), Path("f.txt"))


def test_binary_after_ff_fe_is_reported_as_binary() -> None:
    from bot.knowledge.loaders import LoaderError

    with pytest.raises(LoaderError, match="a binary file, not text"):
        load(b"\xff\xfe" + bytes(range(32)) * 8, Path("f.md"))


def test_the_zebra_file_is_added_as_its_bytes_say(
    kb_cli_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"\xff\xfe\xfa\x80\x81 invalid utf8 text here about zebras\n")
    assert main(["kb", "add", str(f)]) == 0
    capsys.readouterr()
    assert main(["kb", "list"]) == 0
    assert "1 document," in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("loop.md", b"# loop doc\n", "only headings, no text under them"),
        ("front.md", b"---\ntitle: x\n---\n", "only front matter, no text"),
        ("blank.md", b"\n \n", "only blank lines and spaces, no text"),
        ("empty.txt", b"", "the file is empty"),
    ],
)
def test_a_file_with_nothing_to_index_says_what_it_holds(
    kb_cli_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    data: bytes,
    reason: str,
) -> None:
    (tmp_path / name).write_bytes(data)
    assert why_no_text(data, Path(name)) == reason
    assert main(["kb", "add", str(tmp_path / name)]) == 1
    assert f"{name}: {reason}" in capsys.readouterr().err


def test_a_file_of_countless_tiny_sections_is_refused_before_it_is_stored(
    kb_cli_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each section is a passage of its own, so 11 MB of one-line sections made 600,000
    passages: `parley kb add` held 2.4 GB to embed and store them (a 50 MB file, the size
    limit, about five times more), and search over them ran on the database's engine. A
    document that would make more passages than `knowledge.max_document_chunks` fails alone,
    with one line, before anything of it is embedded or stored."""
    monkeypatch.setenv("PARLEY_KNOWLEDGE__MAX_DOCUMENT_CHUNKS", "100")
    (tmp_path / "a.md").write_text("# A\n\nAardvarks.\n")
    (tmp_path / "tiny.md").write_text("".join(f"# h{i}\n\nline {i}\n\n" for i in range(101)))
    (tmp_path / "hundred.md").write_text("".join(f"# h{i}\n\nline {i}\n\n" for i in range(100)))
    status = main(["kb", "add", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == "2 added, 0 updated, 0 unchanged, 1 failed\n"
    failed = [line for line in captured.err.splitlines() if "tiny.md" in line]
    assert len(failed) == 1, captured.err
    assert "more than 100 passages (knowledge.max_document_chunks)" in failed[0]
    assert main(["kb", "list"]) == 0
    assert "2 documents" in capsys.readouterr().out
