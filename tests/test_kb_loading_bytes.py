"""`parley kb add` reading a file's bytes, from a new user's trial: a UTF-8 file with one
stray byte was read whole as Windows-1252 (every accent garbled, the title too), pypdf's
warnings reached the terminal ahead of Parley's own line, and a link to a missing file was
reported under the missing file's name, not the path given. Each test failed before its fix,
but the guards of what already worked (named "still", "wrong", "debug", "parallel")."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.cli import main
from bot.documents import extract
from bot.knowledge import KnowledgeBase, Outcome
from bot.knowledge.loaders import LoaderError, load
from bot.storage import migrate
from bot.storage.database import create_engine

ROOT = Path(__file__).resolve().parents[1]
# Valid UTF-8 Markdown but for one byte (0xFF is never UTF-8).
STRAY = "# Café naïve\n\nPrice 5€ here, a stray ".encode() + b"\xff" + " byte, déjà vu.\n".encode()
BROKEN_PDF = b"not a pdf at all"


@pytest.fixture
async def kb(database_url: str) -> AsyncIterator[KnowledgeBase]:
    await migrate.upgrade(database_url)
    engine = create_engine(database_url)
    try:
        yield KnowledgeBase(engine)
    finally:
        await engine.dispose()


# 1. Decoding


def test_a_utf8_file_with_a_stray_byte_stays_utf8() -> None:
    document = load(STRAY, Path("notes.md"))
    assert document.title == "Café naïve"
    # The stray byte is its Windows-1252 character; every other character is read right.
    assert document.sections[0].text == "Price 5€ here, a stray ÿ byte, déjà vu."


def test_a_pasted_windows_1252_word_in_utf8_text_reads_right() -> None:
    data = "Überblick: naïve ".encode() + "Café crème".encode("cp1252") + " – fin.".encode()
    assert load(data, Path("a.txt")).sections[0].text == "Überblick: naïve Café crème – fin."


def test_a_utf8_bom_is_removed_even_with_a_stray_byte() -> None:
    # Read as Windows-1252, the mark was the text "ï»¿" and the heading was lost.
    document = load(b"\xef\xbb\xbf# BOM\n\nCaf\xe9 au lait.\n", Path("bom.md"))
    assert document.title == "BOM"
    assert [(s.location, s.text) for s in document.sections] == [("BOM", "Café au lait.")]


def test_a_windows_1252_file_is_still_read_as_windows_1252() -> None:
    # Most non-ASCII bytes are not UTF-8; the one pair that happens to be ("Ã©") is not
    # taken for UTF-8's "é".
    text = "Ã© — Café naïve, à l’école, 5 €, œuvre."
    document = load(f"# Menu\n\n{text}\n".encode("cp1252"), Path("menu.md"))
    assert document.sections[0].text == text


def test_utf16_and_utf32_files_with_a_bom() -> None:
    # UTF-32-LE's mark begins with UTF-16-LE's: such a file was read as UTF-16 noise.
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        data = "\ufeff# Überblick\n\nDie Ocelots, 5 €.\n".encode(codec)
        document = load(data, Path("a.md"))
        assert (document.title, document.sections[0].text) == ("Überblick", "Die Ocelots, 5 €.")


def test_utf16_files_without_a_bom_are_read_as_in_a_chat() -> None:
    """Windows' "Unicode" text without a mark, which a document sent in a chat is read as:
    `parley kb add` stored every NUL byte as U+FFFD between the letters (no question found
    them), or refused the file as binary."""
    for codec in ("utf-16-le", "utf-16-be"):
        data = "# Rückgabe\n\nSie können jede Ware zurückgeben, 5 €, 世界.\n".encode(codec)
        document = load(data, Path("de.md"))
        assert (document.title, document.sections[0].text) == (
            "Rückgabe",
            "Sie können jede Ware zurückgeben, 5 €, 世界.",
        )
        page = "<title>Retouren</title><h1>Grüße</h1><p>Umtausch im Laden.</p>".encode(codec)
        assert [s.text for s in load(page, Path("a.html")).sections] == ["Umtausch im Laden."]
        text = "Umbrella returns at the kiosk.\n"
        assert load(text.encode(codec), Path("a.txt")) == load(text.encode(), Path("a.txt"))


def test_a_binary_file_is_still_refused() -> None:
    with pytest.raises(LoaderError, match="binary"):
        load(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), Path("logo.md"))


def test_sixteen_bit_numbers_are_not_utf16_text() -> None:
    """A table of little- or big-endian 16-bit numbers (a sound, a bitmap, a font's table)
    has its NUL bytes on one side of each pair, as UTF-16 text has: it was stored as control
    characters once UTF-16 without a byte-order mark was read, where it was refused before."""
    for order in ("<", ">"):
        data = struct.pack(f"{order}2048H", *(i % 256 for i in range(2048)))
        with pytest.raises(LoaderError, match="binary"):
            load(data, Path("table.md"))


def test_html_declaring_its_encoding_in_a_meta_tag() -> None:
    page = (
        '<html><head><meta charset="koi8-r"><title>Привет</title></head>'
        "<body><h1>Раздел</h1><p>Текст страницы.</p></body></html>"
    )
    document = load(page.encode("koi8-r"), Path("ru.html"))
    assert document.title == "Привет"
    assert [(s.location, s.text) for s in document.sections] == [("Раздел", "Текст страницы.")]
    legacy = (
        '<head><meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'
        "<title>Ошибка</title></head><p>Ок</p>"
    )
    assert load(legacy.encode("cp1251"), Path("a.htm")).title == "Ошибка"


def test_a_turkish_page_by_its_iso_8859_9_label() -> None:
    page = '<meta charset="iso-8859-9"><title>Ağaç şişe</title><p>Ilık İstanbul</p>'
    assert load(page.encode("iso8859-9"), Path("tr.html")).title == "Ağaç şişe"


def test_a_page_sent_in_a_chat_is_read_by_its_meta_charset_too() -> None:
    """Documents sent in a chat follow the knowledge base's rules (documents.extract): a
    KOI8-R page came out as "ðÒÉ×ÅÔ"."""
    page = '<html><head><meta charset="koi8-r"></head><body><p>Привет, мир!</p></body></html>'
    assert extract("html", page.encode("koi8-r"), 10, 10_000) == "Привет, мир!"


def test_html_whose_meta_tag_is_wrong_is_read_by_its_bytes() -> None:
    page = '<meta charset="koi8-r"><title>Café</title><p>Crème brûlée</p>'
    assert load(page.encode(), Path("a.html")).title == "Café"  # it is UTF-8 after all
    latin = '<meta charset="iso-8859-1"><title>Café</title><p>x</p>'
    assert load(latin.encode("cp1252"), Path("b.html")).title == "Café"


def test_kb_list_shows_the_utf8_title(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    (tmp_path / "stray.md").write_bytes(STRAY)
    assert main(["kb", "add", str(tmp_path / "stray.md")]) == 0
    assert main(["kb", "list"]) == 0
    out, _ = capsys.readouterr()
    assert f"Café naïve  ({tmp_path / 'stray.md'})" in out
    assert "Ã" not in out


# 2. A library's log lines


def _parley(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PARLEY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/cli.db",
        "PARLEY_CONFIG": str(ROOT / "config" / "parley.toml"),
        "PARLEY_HOME": str(tmp_path / "home"),
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_kb_add_of_a_broken_pdf_prints_only_parleys_line(tmp_path: Path) -> None:
    pdf = tmp_path / "broken.pdf"
    pdf.write_bytes(BROKEN_PDF)
    quiet = _parley(tmp_path, "kb", "add", str(pdf))
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == [f"[1/1] failed {pdf}: not a readable PDF (PdfStreamError)"]
    assert quiet.stdout.strip() == "0 added, 0 updated, 0 unchanged, 1 failed"
    verbose = _parley(tmp_path, "-v", "kb", "add", str(pdf))
    assert "WARNING pypdf." in verbose.stderr  # shown when asked for


# 3. A link to a missing file


async def test_a_link_to_a_missing_file_is_reported_by_the_path_given(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    link = tmp_path / "dangling.md"
    link.symlink_to(tmp_path / "nonexist.md")
    (tmp_path / "loop.md").symlink_to(tmp_path / "loop.md")
    report = await kb.add([link, tmp_path / "loop.md"])
    assert [(f.outcome, f.source, f.reason) for f in report.files] == [
        (
            Outcome.FAILED,
            str(link),
            f"No such file or directory (a link to a missing file: {tmp_path / 'nonexist.md'})",
        ),
        (Outcome.FAILED, str(tmp_path / "loop.md"), "Too many levels of symbolic links"),
    ]


async def test_a_missing_file_in_a_linked_folder_is_reported_by_the_path_given(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    report = await kb.add([tmp_path / "alias" / "gone.md"])
    assert report.files[0].source == str(tmp_path / "alias" / "gone.md")
    assert report.files[0].reason == "No such file or directory"


def test_kb_add_of_a_dangling_link_names_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    link = tmp_path / "dangling.md"
    link.symlink_to("nonexist.md")  # a relative link, as `ln -s nonexist.md dangling.md` makes
    assert main(["kb", "add", str(link)]) == 1
    _, err = capsys.readouterr()
    target = tmp_path / "nonexist.md"
    assert err.splitlines() == [
        f"[1/1] failed {link}: No such file or directory (a link to a missing file: {target})"
    ]
