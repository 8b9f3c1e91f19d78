"""Hostile review of the knowledge base: inputs a user or a document can send that broke
ingestion or search (each test failed before its fix)."""

from __future__ import annotations

import hashlib
import os
import random
import string
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from adapters.telegram.formatting import to_html
from backends.base import estimate_tokens
from bot.cli import main
from bot.knowledge import KnowledgeBase, Outcome, Passage
from bot.knowledge.chunker import MAX_TOKENS, chunk_sections
from bot.knowledge.index import MAX_DELETIONS, Vocabulary
from bot.knowledge.ingest import MAX_CITED_CHARS, parse_file
from bot.knowledge.loaders import load
from bot.knowledge.types import SearchOptions, Section
from bot.skills.qa import quoted, sources
from bot.storage import migrate
from bot.storage.database import create_engine
from tests.test_knowledge_files import minimal_pdf


@pytest.fixture
async def engine_url(database_url: str) -> str:
    await migrate.upgrade(database_url)  # the SQLite one arrives unmigrated
    return database_url


@pytest.fixture
async def kb(engine_url: str) -> AsyncIterator[KnowledgeBase]:
    engine = create_engine(engine_url)
    try:
        yield KnowledgeBase(engine)
    finally:
        await engine.dispose()


class CountingEmbedder:
    """A deterministic embedder that, like the tokenizers library, refuses a lone surrogate."""

    dim = 8

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        for text in texts:
            text.encode("utf-8")  # UnicodeEncodeError on a lone surrogate, as wordllama fails
        rows = [np.full(self.dim, 1.0 + (hash(t) % 7), dtype=np.float32) for t in texts]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)
        unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return unit


def _random_word(length: int) -> str:
    rng = random.Random(length)
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def _peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_review_kb_a_huge_query_word_is_not_corrected_quadratically() -> None:
    # Correction built every one-letter deletion of the word: n strings of n characters, on
    # the event loop (a 100,000-letter word: 10 GB). 10,000 letters took 100 MB.
    vocabulary = Vocabulary.of(Counter({"migration": 3, "database": 2}))
    word = _random_word(10_000)
    assert _peak_bytes(lambda: vocabulary.correct(word)) < 5_000_000
    assert vocabulary.correct("migratoin") == "migration"  # ordinary typos still corrected


def test_review_kb_a_document_with_a_huge_word_builds_a_small_vocabulary() -> None:
    # The same deletions were kept for every word of the documents: one long "word" (a hex
    # dump, a line of underscores) held n * n characters in memory, or exhausted it.
    frequency = Counter({_random_word(10_000): 1, "migration": 1})
    assert _peak_bytes(lambda: Vocabulary.of(frequency)) < 5_000_000
    assert Vocabulary.of(frequency).correct("migratoin") == "migration"


def test_a_list_of_checksums_and_identifiers_builds_a_small_vocabulary() -> None:
    """Every distinct word of 3-64 letters kept all its deletions, a set each: a 1.7 MB list
    of SHA-256 digests grew the first search by 458 MB, a 6.9 MB one by 1.8 GB (a helper's
    review). Hexadecimal ids and numbers are not corrected, and the most frequent words are,
    up to MAX_DELETIONS deletions."""
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    assert _peak_bytes(lambda: Vocabulary.of(Counter(digests))) < 5_000_000
    rng = random.Random(7)
    ids = {"".join(rng.choice(string.ascii_lowercase) for _ in range(20)) for _ in range(60_000)}
    frequency = Counter(dict.fromkeys(ids, 1)) + Counter({"argument": 9, "migration": 2})
    vocabulary = Vocabulary.of(frequency)
    assert _peak_bytes(lambda: Vocabulary.of(frequency)) < 80_000_000
    assert vocabulary.correct("argumnet") == "argument"  # the frequent words are kept
    assert vocabulary.correct("migratoin") == "migration"
    assert 21 * len(frequency) > MAX_DELETIONS  # not every word fits: the budget did bind


def test_long_words_and_names_with_digits_are_still_corrected() -> None:
    """The first cap lost these (words of more than 32 letters, a quarter of them digits;
    a helper's review of this session's commits)."""
    vocabulary = Vocabulary.of(Counter({
        "rechtsschutzversicherungsgesellschaften": 3, "kraftfahrzeughaftpflichtversicherung": 2,
        "h264": 4, "x265": 2, "utf8": 4, "3fa9c0d1": 5,
    }))  # fmt: skip
    typed = ["rechtschutzversicherungsgesellschaften", "kraftfahrzeughaftpflichtversicherungg",
             "x256", "h246", "utf9", "3fa9c0d2"]  # fmt: skip
    assert [vocabulary.correct(word) for word in typed] == [
        "rechtsschutzversicherungsgesellschaften", "kraftfahrzeughaftpflichtversicherung",
        "x265", "h264", "utf8", None,  # a hexadecimal id is never a mistyped word
    ]  # fmt: skip


async def test_review_kb_nul_bytes_in_a_document_do_not_abort_ingestion(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    # PostgreSQL refuses NUL in text: the whole `kb add` stopped with a StorageError.
    (tmp_path / "a.txt").write_bytes(b"x " * 5000 + b"Nul\x00bytes in the notes on ocelots.\n")
    (tmp_path / "b.md").write_text("# B\n\nAbout pangolins.\n")
    report = await kb.add([tmp_path / "a.txt", tmp_path / "b.md"])
    assert [f.outcome for f in report.files] == [Outcome.ADDED, Outcome.ADDED]
    assert (await kb.search("pangolins"))[0].title == "B"


async def test_review_kb_a_lone_surrogate_does_not_turn_semantic_search_off(
    engine_url: str, tmp_path: Path
) -> None:
    # A JSON body can carry "\ud800"; the embedder raised on it and search then switched
    # semantic search off for every user until a restart.
    engine = create_engine(engine_url)
    try:
        embedder = CountingEmbedder()
        kb = KnowledgeBase(engine, embedder=embedder)
        (tmp_path / "a.md").write_text("# Ocelots\n\nThe ocelot section.\n")
        await kb.add([tmp_path / "a.md"])
        assert await kb.search("ocelot \ud800 question")
        before = embedder.calls
        assert await kb.search("ocelot")
        assert embedder.calls > before  # still asked: semantic search is still on
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "query",
    ['"', "___", "_", "AND OR NOT", "NEAR(a b)", "col:x", "a & b | !c <-> d", "x:*", "\x00",
     "ocelot\ud800", "日本語", "x" * 5000],
)  # fmt: skip
async def test_review_kb_hostile_queries_on_the_database_engine(
    engine_url: str, tmp_path: Path, query: str
) -> None:
    # Over knowledge.max_memory_chunks search runs the database's own full-text statement.
    engine = create_engine(engine_url)
    try:
        kb = KnowledgeBase(engine, options=SearchOptions(max_memory_chunks=0))
        (tmp_path / "a.md").write_text("# A\n\nAnd or not, near columns ___ x. 日本語 ocelot\n")
        await kb.add([tmp_path / "a.md"])
        assert len(await kb.search(query)) <= 3
    finally:
        await engine.dispose()


def test_review_kb_html_without_a_closing_head_tag_keeps_its_body() -> None:
    # HTML5 lets </head> be left out; the whole body was read as part of the head.
    document = load(
        b"<html><head><title>T</title><body><h1>Top</h1><p>Body text.</p></body></html>",
        Path("a.html"),
    )
    assert [(s.location, s.text) for s in document.sections] == [("Top", "Body text.")]
    assert document.title == "T"


def test_review_kb_an_svg_title_is_not_the_page_title() -> None:
    document = load(b"<svg><title>icon</title></svg><h1>Top</h1><p>x</p>", Path("a.html"))
    assert document.title == "Top"


async def test_review_kb_a_file_name_that_is_not_utf8_is_reported(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    # Linux hands such a name to Python with lone surrogates, which no driver can encode:
    # the whole `kb add` of the folder stopped with a traceback.
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.md").write_text("# Good\n\nAbout pangolins.\n")
    (folder / os.fsdecode(b"caf\xe9.md")).write_bytes(b"# Cafe\n\nAbout ocelots.\n")
    report = await kb.add([folder])
    outcomes = sorted((f.outcome, f.reason) for f in report.files)
    assert outcomes[0] == (Outcome.ADDED, "")
    assert outcomes[1][0] is Outcome.FAILED
    assert (await kb.search("pangolins"))[0].title == "Good"


async def test_review_kb_removing_a_path_that_is_not_utf8_finds_nothing(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    name = (bytes(tmp_path) + b"/caf\xe9.md").decode("utf-8", "surrogateescape")
    assert await kb.remove(name) == 0


@pytest.mark.timeout(60)  # the old expression needed hours for this file: a hang, not a timing
def test_review_kb_a_heading_line_of_a_megabyte_loads() -> None:
    # `(.*?)(?:[ \t]+#+)?[ \t]*$` backtracked over every run of blanks: quadratic in the line.
    blanks = " " * 1_000_000
    data = f"---\ntitle: 'T{blanks}x'\n---\n# Top{blanks}end ##\n\nBody.\n".encode()
    document = load(data, Path("a.md"))
    assert document.title == f"T{blanks}x"
    assert [(s.location, s.text) for s in document.sections] == [("Top end", "Body.")]


async def test_review_kb_a_malformed_pdf_is_reported_not_raised(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    # pypdf raises AttributeError or AssertionError on some broken files: `kb add` of a folder
    # stopped there with a traceback, leaving the files after it out.
    pdf = minimal_pdf(["Zebras on page one.", "Pangolins on page two."], "Animals")
    broken = pdf.replace(b"1 0 obj\n", b"1 0 obj 1 0 R\n", 1)  # an object that is a reference
    (tmp_path / "a.pdf").write_bytes(broken)
    (tmp_path / "b.md").write_text("# B\n\nAbout pangolins.\n")
    report = await kb.add([tmp_path / "a.pdf", tmp_path / "b.md"])
    assert [f.outcome for f in report.files] == [Outcome.FAILED, Outcome.ADDED]
    assert report.files[0].reason.startswith("not a readable PDF")


def test_review_kb_a_pdf_title_that_is_a_number_or_has_line_breaks() -> None:
    # A number as /Title raised AttributeError (past the loader's error handling); a line
    # break in it split the citation's "[n] title" line, which the support API parses.
    pages = ["Zebras on page one."]
    numbered = minimal_pdf(pages, "Animals").replace(b"/Title (Animals)", b"/Title 123456789")
    assert load(numbered, Path("zoo.pdf")).title == "zoo"
    assert load(minimal_pdf(pages, "Two\nlines"), Path("zoo.pdf")).title == "Two lines"


@pytest.mark.timeout(60)  # before the fix: about 1,000 s (quadratic), so a hang, not a timing
def test_review_kb_html_ending_in_an_unclosed_tag_loads() -> None:
    # html.parser's close() re-scans an unterminated construct from each "<" before Python
    # 3.11.13 (CVE-2025-6069): 600 kB of `<a x="` is a page that never finishes loading.
    data = b"<h1>Top</h1><p>Body text.</p>" + b'<a x="' * 100_000
    document = load(data, Path("a.html"))
    first = document.sections[0]
    assert (first.location, first.text[:10]) == ("Top", "Body text.")


def test_review_kb_html_short_unclosed_tail_is_still_read() -> None:
    document = load(b"<h1>Top</h1><p>Fish</p>AT&T <!-- never closed", Path("a.html"))
    assert document.sections[0].text.startswith("Fish\n\nAT&T")


def test_review_kb_a_citation_never_renders_as_a_hidden_link() -> None:
    # Replies are rendered as Markdown (Telegram's to_html): a document titled like a link
    # became a link in the sources, its address hidden from the reader.
    hostile = "[Reset your password](https://attacker.example/login)"
    passages = [Passage("Text.", hostile, "", "/docs/a.html", 1.0)]
    for reply in (sources(passages, "Sources:"), quoted(passages, "Quoted:")):
        html = to_html(reply)
        assert "<a " not in html
        assert "attacker.example" in html  # shown as text, where the reader sees it


def test_a_citation_holds_no_direction_override_to_reverse_its_line() -> None:
    """A title or heading with a bidirectional override or embedding (a file named
    `Refund\u202efdp.exe.md`, a PDF's metadata, a web page's <title>) reversed the rest of
    its line of the sources as shown: `Refund` and then `exe.pdf`. Parley's sentences drop
    them from what a user typed (bot.phrases.said_back); a citation drops them too."""
    title = load(b"Refunds are made within 14 days.", Path("Refund\u202efdp.exe.md")).title
    location = "Terms \u2067> Returns\u2069 \u202bpage\u202c"
    passages = [Passage("Text.", title, location, "/docs/x.md", 1.0)]
    for reply in (sources(passages, "Sources:"), quoted(passages, "Quoted:")):
        assert not set(reply) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
        assert "Refundfdp.exe, Terms > Returns page" in reply
    # A right-to-left mark stays: it overrides nothing after it.
    arabic = "\u0645\u0631\u062d\u0628\u0627 \u200fGuide"
    assert arabic in sources([Passage("Text.", arabic, "", "/d.md", 1.0)], "Sources:")


def test_review_kb_a_word_longer_than_a_chunk_is_cut() -> None:
    # Chunks are at most MAX_TOKENS; a word with no space in it was kept whole (a 5 MB chunk).
    chunks = chunk_sections([Section("", "Intro words. " + "f" * 100_000 + " end")])
    assert max(c.token_count for c in chunks) <= MAX_TOKENS
    assert "".join(c.text for c in chunks).replace(" ", "") == (
        "Introwords." + "f" * 100_000 + "end"
    )


async def test_review_kb_a_binary_file_named_md_is_reported(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    # An image renamed .md was indexed as a page of cp1252 noise.
    (tmp_path / "logo.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    report = await kb.add([tmp_path / "logo.md"])
    assert report.files[0].outcome is Outcome.FAILED
    assert report.files[0].reason == "a binary file, not text"


def test_review_kb_a_stray_nul_in_utf8_text_is_only_a_character() -> None:
    # Only a file that is not UTF-8 is taken for binary: text with a stray NUL still loads.
    document = load("# Ocelots\n\nSpotted\x00 cats, café.\n".encode(), Path("a.md"))
    assert document.sections[0].location == "Ocelots"


def test_review_kb_a_utf16_text_file_is_read() -> None:
    # Windows' "Unicode" text files: read as cp1252 they were NUL-riddled noise.
    document = load("# Überblick\n\nDie Ocelots.\n".encode("utf-16"), Path("a.md"))
    assert document.sections[0].location == "Überblick"
    assert document.sections[0].text == "Die Ocelots."


def test_review_kb_a_huge_heading_is_cut_like_the_title(tmp_path: Path) -> None:
    # A 100,000-character heading was stored with each of its chunks and quoted whole in
    # the sources of every answer citing it.
    heading = "word " * 20_000
    data = f"# {heading}\n\nBody text.\n".encode()
    parsed = parse_file(tmp_path / "a.md", data, estimate_tokens)
    assert len(parsed.title) <= MAX_CITED_CHARS
    assert all(len(c.location) <= MAX_CITED_CHARS for c in parsed.chunks)


@pytest.mark.timeout(60)  # before the fix the read never returned: a hang, not a timing
async def test_review_kb_a_fifo_named_directly_is_reported(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    # Opening a FIFO waits for a writer forever: `parley kb add notes.md` hung.
    os.mkfifo(tmp_path / "notes.md")
    report = await kb.add([tmp_path / "notes.md"])
    assert (report.files[0].outcome, report.files[0].reason) == (
        Outcome.FAILED,
        "not a regular file",
    )


def test_review_kb_kb_list_prints_no_terminal_escape_sequences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A heading with ESC [2J (clear screen) or an OSC sequence reached the terminal as is.
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")
    (tmp_path / "a\x1b[2J.md").write_text("# Title\x1b[2J\x1b]52;c;ZXZpbA==\x07\n\nBody.\n")
    assert main(["kb", "add", str(tmp_path / "a\x1b[2J.md")]) == 0
    assert main(["kb", "list"]) == 0
    out, err = capsys.readouterr()
    assert "Title" in out
    assert "\x1b" not in out + err and "\x07" not in out + err


async def test_a_folder_added_again_forgets_the_files_gone_from_it(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    """A file renamed and edited (a new refund policy) kept its old version in the knowledge
    base, which search ranked first (a helper's review). A folder added again is the folder
    as it is now; a file named alone, or a folder that is not there, removes nothing."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text("# Refunds\n\nRefunds are accepted within 30 days.\n")
    (tmp_path / "other.md").write_text("# Other\n\nShipping takes a week.\n")
    await kb.add([docs, tmp_path / "other.md"])
    (docs / "refunds.md").unlink()
    (docs / "refund-policy.md").write_text("# Refunds\n\nRefunds are accepted within 14 days.\n")
    (tmp_path / "other.md").unlink()
    report = await kb.add(str(p) for p in [docs, tmp_path / "missing-folder"])
    assert report.removed == [(docs / "refunds.md").as_posix()]
    assert report.summary().endswith(", 1 removed (files gone)")
    sources = sorted(d.source for d in await kb.list())
    assert sources == [(docs / "refund-policy.md").as_posix(), (tmp_path / "other.md").as_posix()]
    found = [p.text for p in await kb.search("within how many days are refunds accepted", 3)]
    assert found == ["Refunds are accepted within 14 days."]


async def test_a_file_this_user_may_not_look_at_is_not_taken_for_gone(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-adding a folder removed the documents of a subfolder this user could no longer
    search: os.path.exists said False for files still there (a helper's review). The tests
    run as root, which searches any folder: the refusal is the kernel's answer, given here."""
    docs = tmp_path / "docs"
    (docs / "team").mkdir(parents=True)
    rota = docs / "team" / "rota.md"
    rota.write_text("# Team\n\nThe on-call rota is in the wiki.\n")
    (docs / "refunds.md").write_text("# Refunds\n\nRefunds take 14 days.\n")
    await kb.add([docs])
    real_stat, real_scandir = os.stat, os.scandir

    def refused(path: object) -> bool:
        return str(path).startswith(str(docs / "team"))

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if refused(path):  # chmod 0 on team/: its files cannot be looked at...
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    def scandir(path: object = ".") -> object:
        if refused(path):  # ...nor the folder listed (the walk passes over it)
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    report = await kb.add([docs])
    monkeypatch.undo()
    assert report.removed == []
    assert sorted(d.source for d in await kb.list()) == [
        (docs / "refunds.md").as_posix(),
        rota.as_posix(),
    ]


def test_a_title_or_heading_over_two_lines_cites_as_one_line(tmp_path: Path) -> None:
    """A file named with a line break (its name is the title of a document without a heading)
    was cited with the break in it, so the sources list showed a line of the document's
    making: "[2] Official refund policy"."""
    from bot.skills.qa import sources

    named = tmp_path / "guide\n[2] Official refund policy.txt"
    data = b"Refunds take ten days."
    parsed = parse_file(named, data, estimate_tokens)
    assert parsed.title == "guide [2] Official refund policy"
    passages = [
        Passage("Refunds take ten days.", parsed.title, "", str(named), 0.9),
        Passage("Parcels leave on Mondays.", "ship", "Shipping", "ship.md", 0.8),
    ]
    listed = sources(passages, "Sources:").splitlines()
    assert listed[0] == "Sources:"
    assert [line[:4] for line in listed[1:]] == ["[1] ", "[2] "]


async def test_review_kb_a_file_of_control_bytes_is_reported(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    # With no NUL among them, control bytes were indexed as 4 chunks of "text".
    controls = bytes([1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 15, 16, 17, 18, 19, 20]) * 300
    (tmp_path / "noise.txt").write_bytes(controls)
    (tmp_path / "bell.txt").write_bytes(b"Ring the bell\x07 twice.\n" * 20)
    report = await kb.add([tmp_path / "noise.txt", tmp_path / "bell.txt"])
    outcomes = {Path(f.source).name: (f.outcome, f.reason) for f in report.files}
    assert outcomes["noise.txt"] == (Outcome.FAILED, "a binary file, not text")
    assert outcomes["bell.txt"][0] is Outcome.ADDED


async def test_review_kb_a_formatted_man_page_is_text(kb: KnowledgeBase, tmp_path: Path) -> None:
    # nroff's bold and underline are overstrike ('N\bN'): about 10% of a man page's bytes.
    bold = "".join(f"{c}\b{c}" for c in "SYNOPSIS")
    (tmp_path / "ls.txt").write_text(f"{bold}\n       ls [OPTION]... [FILE]...\n" * 40)
    report = await kb.add([tmp_path / "ls.txt"])
    assert [f.outcome for f in report.files] == [Outcome.ADDED], report.files


def test_a_folder_that_holds_no_file_now_forgets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parley kb add /mnt/docs` run (from cron, say) while the share is not mounted: the
    folder is there and empty, and every document added from it was removed as gone, with
    exit 0 (a helper's review). A folder that holds no file Parley reads now removes nothing:
    the command says so and exits 1; `parley kb remove FOLDER` removes its documents."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")
    share, other = tmp_path / "mnt" / "docs", tmp_path / "other"
    share.mkdir(parents=True)
    other.mkdir()
    (share / "refunds.md").write_text("# Refunds\n\nRefunds take 14 days.\n")
    (share / "shipping.md").write_text("# Shipping\n\nShipping takes a week.\n")
    (other / "hours.md").write_text("# Hours\n\nWe open at nine.\n")
    assert main(["kb", "add", str(share), str(other)]) == 0
    capsys.readouterr()
    (share / "refunds.md").unlink()  # the share unmounted: its mount point is empty
    (share / "shipping.md").unlink()
    (other / "hours.md").unlink()  # a folder that still holds a file forgets as before...
    (other / "days.md").write_text("# Days\n\nMonday to Friday.\n")
    assert main(["kb", "add", str(share), str(other)]) == 1
    err = capsys.readouterr().err
    assert f"{share.as_posix()} holds no file to add now" in err
    assert "2 documents from it are kept" in err
    assert main(["kb", "list"]) == 0
    listed = capsys.readouterr().out
    assert "refunds.md" in listed and "shipping.md" in listed
    assert "hours.md" not in listed and "days.md" in listed
    assert main(["kb", "remove", str(share)]) == 0  # the way to remove them on purpose
    assert "removed 2 documents" in capsys.readouterr().out


def test_one_document_kept_from_an_empty_folder_is_said_in_the_singular(
    kb_cli_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first-timer's folder of one file, emptied: the line said "the 1 document from it
    are kept (... removes them)"."""
    folder = tmp_path / "faq"
    folder.mkdir()
    (folder / "faq.md").write_text("# Returns\n\nReturns take 30 days.\n")
    assert main(["kb", "add", str(folder)]) == 0
    capsys.readouterr()
    (folder / "faq.md").unlink()
    assert main(["kb", "add", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "the 1 document from it is kept" in err
    assert f"(parley kb remove {folder.as_posix()} removes it)" in err


async def test_a_subfolder_named_too_that_holds_no_file_now_is_kept_not_removed(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    """`parley kb add /docs /docs/share` while the share is not mounted: the share was
    reported kept (no file in it now), yet its documents were removed as gone, since /docs,
    named too and holding files, was looked in for them; the command then said that none of
    its documents were kept. A document under a folder named that holds no file is kept."""
    docs, share = tmp_path / "docs", tmp_path / "docs" / "share"
    share.mkdir(parents=True)
    (docs / "hours.md").write_text("# Hours\n\nWe open at nine.\n")
    (share / "refunds.md").write_text("# Refunds\n\nRefunds take 14 days.\n")
    await kb.add([docs, share])
    (share / "refunds.md").unlink()  # the share unmounted: its mount point is empty
    report = await kb.add([docs, share])
    assert report.kept == [f"{share.resolve().as_posix()}/"]
    assert report.removed == []
    assert {Path(d.source).name for d in await kb.list(None)} == {"hours.md", "refunds.md"}


async def test_a_subfolder_that_holds_no_file_now_is_kept_under_a_folder_added_again(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    """`parley kb add /docs` while the share mounted on /docs/share is not: /docs holds files,
    so it was looked in, and every document of the share was removed as gone. A subfolder
    that is there and holds no file now is kept and said, as a named folder is; a subfolder
    deleted (or renamed) with its files, and a file deleted beside others, still go."""
    docs = tmp_path / "docs"
    share, old, guide = docs / "share", docs / "old", docs / "guide"
    for folder in (share / "deep", old, guide):
        folder.mkdir(parents=True)
    (docs / "hours.md").write_text("# Hours\n\nWe open at nine.\n")
    (share / "refunds.md").write_text("# Refunds\n\nRefunds take 14 days.\n")
    (share / "deep" / "fees.md").write_text("# Fees\n\nNo fees.\n")
    (old / "legacy.md").write_text("# Legacy\n\nThe old way.\n")
    (guide / "a.md").write_text("# A\n\nFirst.\n")
    (guide / "b.md").write_text("# B\n\nSecond.\n")
    await kb.add([docs])
    (share / "refunds.md").unlink()  # the share unmounted: its mount point is empty
    (share / "deep" / "fees.md").unlink()
    (share / "deep").rmdir()
    (old / "legacy.md").unlink()  # a subfolder deleted with its files
    old.rmdir()
    (guide / "b.md").unlink()  # a file deleted beside another
    report = await kb.add([docs])
    assert report.kept == [f"{share.resolve().as_posix()}/"]
    assert sorted(Path(s).name for s in report.removed) == ["b.md", "legacy.md"]
    names = {Path(d.source).name for d in await kb.list(None)}
    assert names == {"hours.md", "refunds.md", "fees.md", "a.md"}
