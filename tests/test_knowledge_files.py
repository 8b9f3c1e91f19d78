"""The knowledge base's file side, without a database: loaders for every format, the chunker,
the query sanitiser and the command line's progress output."""

from __future__ import annotations

import io
import re
import tracemalloc
import zlib
from pathlib import Path

import pytest

from backends.base import estimate_tokens
from bot.knowledge.chunker import chunk_sections
from bot.knowledge.cli import ProgressPrinter
from bot.knowledge.ingest import collect_files, read_file
from bot.knowledge.loaders import LoaderError, load
from bot.knowledge.search import MAX_TERMS, fts5_query, query_terms
from bot.knowledge.types import MAX_CITED_CHARS, FileResult, Outcome, Passage, Section
from tests.test_documents import pdf

MARKDOWN = b"""Preamble before any heading.

# Guide

Intro paragraph.

## Install

Run the installer.

```sh
# not a heading: a shell comment in a fence
make run
```

### On Linux

Use apt.

Setext title
------------

Under a setext heading.

# Appendix `extra`

The end.
"""

HTML = b"""<html><head><title>Web Page</title><style>.x { color: red }</style></head>
<body><nav>menu menu</nav><h1>Top</h1><p>First <b>para</b>graph.</p>
<script>var secret = "scripted";</script><h2>Child</h2><ul><li>one</li><li>two</li></ul>
<h2>Sibling</h2><p>Last&nbsp;words &amp; more.</p></body></html>"""


def minimal_pdf(pages: list[str], title: str = "") -> bytes:
    """A valid PDF with one line of Helvetica text per page, built by hand."""
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    info = len(objects) + 1
    objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        info,
        xref,
    )
    return bytes(out)


def test_markdown_sections_follow_the_heading_path() -> None:
    doc = load(MARKDOWN, Path("guide.md"))
    assert doc.title == "Guide"
    locations = {s.location: s.text for s in doc.sections}
    assert list(locations) == [
        "",
        "Guide",
        "Guide > Install",
        "Guide > Install > On Linux",
        "Guide > Setext title",
        "Appendix extra",
    ]
    assert "# not a heading" in locations["Guide > Install"]
    assert locations["Guide > Setext title"] == "Under a setext heading."


def test_markdown_headings_are_kept_as_a_reader_sees_them() -> None:
    text = b"""# The `load_only()` option

a

## `__init__` and **bold** _words_ with [a link](https://x.test) and snake_case

b

Setext `__slots__`
------------------

c
"""
    doc = load(text, Path("api.md"))
    assert [s.location for s in doc.sections] == [
        "The load_only() option",
        "The load_only() option > __init__ and bold words with a link and snake_case",
        "The load_only() option > Setext __slots__",
    ]


def test_markdown_front_matter_is_not_a_heading() -> None:
    text = b"""---
title: "Deploying behind a proxy"
tags: [nginx, tls]
---
Set `forwarded_allow_ips`.

## Headers

Trust X-Forwarded-For only from the proxy.
"""
    doc = load(text, Path("proxy.md"))
    assert doc.title == "Deploying behind a proxy"
    assert [(s.location, s.text) for s in doc.sections] == [
        ("", "Set `forwarded_allow_ips`."),
        ("Headers", "Trust X-Forwarded-For only from the proxy."),
    ]
    # A first "---" never closed is a thematic break, and the text stays.
    assert load(b"---\nplain words", Path("rule.md")).sections == [Section("", "---\nplain words")]


def test_markdown_without_headings_is_titled_by_file_name() -> None:
    doc = load(b"just text", Path("notes.markdown"))
    assert doc.title == "notes"
    assert doc.sections == [Section("", "just text")]


def test_plain_text_is_one_section_and_survives_bad_bytes() -> None:
    doc = load(b"caf\xe9 au lait\n\nsecond", Path("menu.txt"))
    assert doc.title == "menu"
    assert doc.sections[0].text.startswith("café au lait")


def test_html_drops_scripts_and_styles_and_keeps_headings() -> None:
    doc = load(HTML, Path("page.html"))
    assert doc.title == "Web Page"
    by_location = {s.location: s.text for s in doc.sections}
    assert by_location == {
        "Top": "First paragraph.",
        "Top > Child": "one\n\ntwo",
        "Top > Sibling": "Last words & more.",
    }


def test_html_with_a_nameless_marked_section_loads_as_text() -> None:
    """`<![` before anything but a name stopped the standard library's parser with an
    AssertionError (tests/test_fuzz_inputs.py drew `<![0`): such a file loads, the `<![` read
    as text."""
    loaded = load(b"<h1>Guide</h1><p>Use <![0] for arrays.</p>", Path("doc.html"))
    assert [(s.location, s.text) for s in loaded.sections] == [("Guide", "Use <![0] for arrays.")]
    assert load(b"<![0", Path("doc.html")).sections[0].text == "<![0"


def test_a_path_that_does_not_exist_is_named_so(tmp_path: Path) -> None:
    """`parley kb add /nonexistent` said "unsupported file type (no extension)"."""
    for name in ("nonexistent", "missing.md"):
        with pytest.raises(LoaderError, match=r"^No such file or directory$"):
            read_file(tmp_path / name, 1_000_000)


def test_pdf_sections_are_pages() -> None:
    data = minimal_pdf(["Zebras graze on page one.", "Giraffes (tall) on page two."], "Animals")
    doc = load(data, Path("animals.pdf"))
    assert doc.title == "Animals"
    assert [(s.location, s.text) for s in doc.sections] == [
        ("page 1", "Zebras graze on page one."),
        ("page 2", "Giraffes (tall) on page two."),
    ]


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("broken.pdf", b"%PDF-1.4 not really", "not a readable PDF"),
        ("slides.pptx", b"PK", "unsupported file type .pptx"),
        ("Makefile", b"all:", "unsupported file type (no extension)"),
    ],
)
def test_unreadable_files_raise_loader_error(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(LoaderError, match=re.escape(reason)):
        load(data, Path(name))


def test_chunks_stay_within_the_limit_and_inside_their_section() -> None:
    sentence = "This sentence is about chunking text for search. "
    long_paragraph = sentence * 80  # ~1000 tokens, no blank line in it
    sections = [Section("A", "\n\n".join([sentence * 10] * 6)), Section("B", long_paragraph)]
    chunks = chunk_sections(sections, estimate_tokens, max_tokens=350)
    assert {c.location for c in chunks} == {"A", "B"}
    assert all(c.token_count <= 350 for c in chunks)
    assert all(c.token_count == estimate_tokens(c.text) for c in chunks)
    # Paragraphs are packed: six 125-token paragraphs make three chunks, not six.
    assert len([c for c in chunks if c.location == "A"]) == 3
    assert all(c.text.endswith(".") for c in chunks)  # cut at sentence ends


def test_chunker_uses_the_injected_counter_and_cuts_runaway_sentences() -> None:
    words = " ".join(f"w{i}" for i in range(1000))  # one "sentence", no punctuation

    def count_words(text: str) -> int:
        return len(text.split())

    chunks = chunk_sections([Section("", words)], count_words, max_tokens=300)
    assert [c.token_count for c in chunks] == [300, 300, 300, 100]
    assert " ".join(c.text for c in chunks) == words


def test_a_long_line_without_sentence_ends_is_cut_counting_each_word_a_few_times() -> None:
    """A paragraph with no sentence end in it (a log, a list, one line of words) is cut
    between words: the chunk being filled was joined and counted again for every word, about
    700 times each character of a 350-token chunk of short words, so a 50 MB one-line file
    took `parley kb add` two minutes (prose of that size: five seconds)."""
    line = " ".join(f"w{i % 10}" for i in range(60_000))
    counted = 0

    def count(text: str) -> int:
        nonlocal counted
        counted += len(text)
        return estimate_tokens(text)

    chunks = chunk_sections([Section("", line)], count, max_tokens=350)
    assert " ".join(c.text for c in chunks) == line  # every word, in order, none cut
    assert all(c.token_count <= 350 for c in chunks)
    # Each chunk as full as the limit allows: one more word would pass it.
    words = line.split()
    taken = 0
    for chunk in chunks[:-1]:
        taken += len(chunk.text.split())
        assert estimate_tokens(f"{chunk.text} {words[taken]}") > 350
    assert counted < 20 * len(line), f"each character counted {counted / len(line):.0f} times"


def test_a_long_line_of_words_is_cut_without_holding_each_word_at_once() -> None:
    """The words of a sentence too long for a chunk were split all at once: a 50 MB line of
    short words held 1.4 GB (a Python string of each word), where a window of them does."""
    line = "ab " * 300_000
    tracemalloc.start()
    try:
        chunks = chunk_sections([Section("", line)], estimate_tokens, max_tokens=350)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert " ".join(c.text for c in chunks) == line.strip()
    assert peak < 6 * len(line), f"{peak / len(line):.1f} bytes a byte of the line"


def test_empty_sections_make_no_chunks() -> None:
    assert chunk_sections([Section("x", "  \n\n  ")]) == []


@pytest.mark.parametrize(
    ("question", "terms"),
    [
        ("How do I configure Redis?", ["configure", "redis"]),
        ('"unbalanced AND (OR NOT* col:x', ["unbalanced", "or", "not", "col", "x"]),
        ("AND OR NOT", ["or", "not"]),  # words that name things in technical text stay
        ("WITH clause queries", ["with", "clause", "queries"]),
        (
            "insert into a table by id, not from a file",
            ["insert", "into", "table", "by", "id", "not", "from", "file"],
        ),
        ("how do I", ["how", "do", "i"]),  # only stop words: keep them rather than nothing
        ("Grüße 日本語 Привет", ["grüße", "日本語", "привет"]),
        ('" * : ^ - ( )', []),
        ("", []),
    ],
)
def test_query_terms_are_plain_words(question: str, terms: list[str]) -> None:
    assert query_terms(question) == terms


def test_engine_queries_quote_every_word_and_cap_their_number() -> None:
    terms = query_terms(" ".join(f"word{i}" for i in range(100)))
    assert len(terms) == MAX_TERMS
    assert fts5_query(["a", "b"]) == '"a" OR "b"'


def test_folders_are_walked_for_supported_visible_files(tmp_path: Path) -> None:
    for name in ["a.md", "sub/b.html", "sub/c.png", ".git/d.md", "sub/.hidden.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    named = tmp_path / "sub" / "c.png"
    found = collect_files([tmp_path, named, tmp_path / "a.md"])
    assert [f.path.relative_to(tmp_path).as_posix() for f in found] == [
        "a.md",
        "sub/b.html",
        "sub/c.png",
    ]


def test_symlinks_out_of_a_folder_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret")
    (outside / "deep").mkdir()
    (outside / "deep" / "more.md").write_text("# More")
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "own.md").write_text("# Own")
    (folder / "link-out.md").symlink_to(outside / "secret.md")
    (folder / "dir-out").symlink_to(outside / "deep", target_is_directory=True)
    (folder / "link-in.md").symlink_to(folder / "own.md")  # the same file, stored once
    found = collect_files([folder])
    assert [f.path.name for f in found] == ["link-in.md"]
    # Named directly, a link is the operator's choice.
    assert [f.path.name for f in collect_files([folder / "link-out.md"])] == ["link-out.md"]


def test_citation_does_not_repeat_the_title() -> None:
    def cite(title: str, location: str) -> str:
        return Passage("t", title, location, "s", 1.0).citation

    assert cite("Guide", "Guide > Install") == "Guide > Install"
    assert cite("Guide", "Guide") == "Guide"
    assert cite("Report", "page 3") == "Report, page 3"
    assert cite("notes", "") == "notes"


def test_progress_is_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out)
    printer(1, 2, FileResult("/d/a.md", Outcome.ADDED, chunks=3))
    printer(2, 2, FileResult("/d/b.doc", Outcome.FAILED, reason="unsupported file type .doc"))
    assert out.getvalue().splitlines() == [
        "[1/2] added /d/a.md (3 chunks)",
        "[2/2] failed /d/b.doc: unsupported file type .doc",
    ]


def test_a_right_to_left_override_is_shown_not_obeyed() -> None:
    """A document's title or a file's name with U+202E (RIGHT-TO-LEFT OVERRIDE) reversed the
    rest of the operator's line on a terminal that lays out bidirectional text, so a path
    could read as another; U+2066-U+2069 (isolates) too. Arabic and Hebrew text stays."""
    out = io.StringIO()
    printer = ProgressPrinter(out)
    printer(1, 2, FileResult("/d/\u202egpj.md", Outcome.ADDED, chunks=1))
    printer(2, 2, FileResult("/d/\u2067שלום.md", Outcome.FAILED, reason="\u202bنص\u202c"))
    assert out.getvalue().splitlines() == [
        "[1/2] added /d/\ufffdgpj.md (1 chunk)",
        "[2/2] failed /d/\ufffdשלום.md: \ufffdنص\ufffd",
    ]


def test_progress_draws_a_bar_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    printer = ProgressPrinter(out)
    printer(1, 2, FileResult("/d/a.md", Outcome.ADDED, chunks=3))
    printer(2, 2, FileResult("/d/b.md", Outcome.UNCHANGED))
    text = out.getvalue()
    assert "\r" in text and "[###############...............] 1/2" in text
    assert text.endswith("2/2 /d/b.md\n")


@pytest.mark.parametrize("kind", ["markdown", "html"])
def test_a_long_heading_is_cut_as_it_is_read_not_copied_into_every_section(kind: str) -> None:
    """Each section took the whole heading path, cut to 500 characters only when stored: a
    1 MB heading over 300 sections peaked at 302 MB, and 10,000 sections ran out of memory
    (a helper's review). Each heading is now cut as it is read."""
    heading = "a" * 1_000_000
    if kind == "markdown":
        name, data = "x.md", ("# " + heading + "\n\n" + "## b\n\nx\n\n" * 300).encode()
    else:
        name, data = "x.html", ("<h1>" + heading + "</h1>" + "<h2>b</h2>x" * 300).encode()
    tracemalloc.start()
    try:
        doc = load(data, Path(name))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(doc.sections) == 300
    assert doc.sections[0].location == "a" * MAX_CITED_CHARS + " > b"
    assert peak < 30_000_000, f"{peak / 1e6:.0f} MB for a {len(data) / 1e6:.1f} MB file"


@pytest.mark.parametrize("underline", [False, True])
def test_a_heading_of_markup_is_cut_before_it_is_parsed(underline: bool) -> None:
    """A heading's inline Markdown was parsed whole and only then cut to 500 characters:
    markdown-it makes tokens of every `![` of the line, so a 2 MB heading line of them took
    58 s and 287 MB, and a 50 MB one (within knowledge.max_file_mb) half an hour and
    gigabytes. The heading's text a reader sees is the same."""
    markup = "![" * 50_000
    line = f"{markup}\n===" if underline else f"# {markup}"
    data = f"# [Install](https://example.net/a) *now*\n\nFirst.\n\n{line}\n\nBody.\n".encode()
    tracemalloc.start()
    try:
        doc = load(data, Path("x.md"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert doc.sections[0].location == "Install now"
    assert doc.sections[1].location == "![" * (MAX_CITED_CHARS // 2)
    assert peak < 3_000_000, f"{peak / 1e6:.0f} MB for a {len(data) / 1e3:.0f} kB file"


def test_a_link_inside_the_folder_brings_in_no_hidden_file(tmp_path: Path) -> None:
    """A committed link `remote-setup.md -> .git/config` put the repository's credentials in
    the knowledge base: the walk skips hidden files, the link's own name was not hidden."""
    wiki = tmp_path / "wiki"
    (wiki / ".git").mkdir(parents=True)
    (wiki / ".git" / "config").write_text('[remote "origin"]\n\turl = https://deploy:tok@x\n')
    (wiki / ".env").write_text("TOKEN=abc\n")
    (wiki / "data.bin").write_bytes(b"\x00\x01")
    (wiki / "guide.md").write_text("# Guide\n\nHello.\n")
    (wiki / "remote-setup.md").symlink_to(".git/config")
    (wiki / "settings.md").symlink_to(".env")
    (wiki / "data.md").symlink_to("data.bin")  # a type the walk would pass over
    (wiki / "start.md").symlink_to("guide.md")  # still taken: the same file, stored once
    assert [f.path.name for f in collect_files([wiki])] == ["guide.md"]


def test_a_pdf_that_unpacks_to_far_more_text_than_its_size_is_refused() -> None:
    """Pages sharing one compressed stream: 2.7 kB gave 3 million characters here, and a
    25 kB PDF 199 million (164,000 chunks, 3 min 48 s, a 679 MB database)."""
    line = b"BT /F1 12 Tf 10 10 Td (" + b"a" * 1000 + b") Tj ET\n"
    data = pdf(4, line * 1000)  # each page draws the same million characters
    assert len(data) < 5_000
    with pytest.raises(LoaderError, match="unpacks to over 2,000,000 characters"):
        load(data, Path("manual.pdf"))


def test_a_pdf_of_far_more_pages_than_its_size_holds_is_refused() -> None:
    """A page tree may list one small page again and again, 6 bytes each: a 121 kB PDF
    became 20,000 pages read (11 s) and 20,000 chunks, each with its own vector, and a 50 MB
    one, within knowledge.max_file_mb, would have made millions. A real page takes
    kilobytes; a PDF of 1,000 pages or fewer loads whatever its size."""
    base = minimal_pdf(["Zebras on page one.", "Pangolins on page two."])
    kids = b" ".join([b"4 0 R"] * 5_000)
    data = base.replace(b"/Kids [4 0 R 6 0 R] /Count 2", b"/Kids [%s] /Count 5000" % kids)
    assert len(data) < 40_000
    with pytest.raises(LoaderError, match="the PDF has 5,000 pages, far more than"):
        load(data, Path("manual.pdf"))
    kids = b" ".join([b"4 0 R", b"6 0 R"] * 500)  # 1,000 pages: allowed
    data = base.replace(b"/Kids [4 0 R 6 0 R] /Count 2", b"/Kids [%s] /Count 1000" % kids)
    assert len(load(data, Path("manual.pdf")).sections) == 1_000


def test_a_pdf_page_that_unpacks_to_far_more_than_its_size_is_refused_before_it_is_read() -> None:
    """One page's text was counted only once read: a 270 kB PDF whose page unpacks to 70 MB
    of text operators was read for over 5 minutes, and a 68 kB one took 28 s and 1 GB. Its
    unpacked content is measured first, and the page never read."""
    data = pdf(1, b"BT /F1 12 Tf 10 10 Td (" + b"a" * 6_000_000 + b") Tj ET\n")
    assert len(data) < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(LoaderError, match="unpacks to over 2,000,000 characters"):
            load(data, Path("manual.pdf"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40_000_000, f"{peak / 1e6:.0f} MB for a {len(data) / 1e3:.0f} kB file"


def _pdf_drawing_a_form(draws: int, form: bytes, images: int = 0) -> bytes:
    """A one-page PDF that draws one form XObject `draws` times, and one image `images`
    times."""
    page = zlib.compress(b"/X0 Do\n" * draws + b"/Im0 Do\n" * images, 9)
    font = b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /XObject << /X0 5 0 R /Im0 6 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(page), page),
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources %s /Length %d >>\n"
        b"stream\n%s\nendstream" % (font, len(form), form),
        b"<< /Type /XObject /Subtype /Image /Width 1 /Height 1 /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length 1 >>\nstream\n\x00\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_a_pdf_page_that_draws_one_form_over_and_over_is_refused_before_it_is_read() -> None:
    """A 5 kB page that draws one 1 MB form (its text read again at each `Do`) 4,900 times
    was read for over 5 minutes: each `Do` on the page counts the form's size again."""
    form = b"BT /F1 12 Tf 10 10 Td (" + b"b" * 5000 + b") Tj ET"
    data = _pdf_drawing_a_form(2000, form)
    assert len(data) < 10_000
    assert "b" * 5000 in load(_pdf_drawing_a_form(3, form), Path("logo.pdf")).sections[0].text
    tracemalloc.start()
    try:
        with pytest.raises(LoaderError, match="unpacks to over 2,000,000 characters"):
            load(data, Path("manual.pdf"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"{peak / 1e6:.0f} MB for a {len(data) / 1e3:.0f} kB file"


def test_a_page_drawing_many_images_beside_a_form_is_read() -> None:
    """Only forms count again at each `Do`: images are not read for text, so a page of 500
    thumbnails beside a 20 kB form (a letterhead) is read as any page."""
    form = b"BT /F1 12 Tf 10 10 Td (Letterhead) Tj ET\n" + b"0 0 m 1 1 l S\n" * 1500
    assert len(form) > 20_000
    data = _pdf_drawing_a_form(1, form, images=500)
    assert "Letterhead" in load(data, Path("catalogue.pdf")).sections[0].text
