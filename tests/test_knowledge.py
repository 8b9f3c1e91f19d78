"""The knowledge base on real SQLite and PostgreSQL: ingestion of every format, updates,
removals, search ranking and hostile queries, the sample loader, the `parley kb` command and
migration 0002 both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from bot.cli import main
from bot.knowledge import KnowledgeBase, Outcome, load_sample_if_empty
from bot.settings import KnowledgeSettings
from bot.storage import migrate
from bot.storage.database import create_engine
from tests.test_knowledge_files import HTML, MARKDOWN, minimal_pdf

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
async def kb(database_url: str) -> AsyncIterator[KnowledgeBase]:
    await migrate.upgrade(database_url)  # the SQLite one arrives unmigrated
    engine = create_engine(database_url)
    try:
        yield KnowledgeBase(engine)
    finally:
        await engine.dispose()


def write_library(folder: Path) -> Path:
    """One file of each format, each with a word found nowhere else."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "guide.md").write_bytes(MARKDOWN + b"\n## Ocelots\n\nThe ocelot section.\n")
    (folder / "notes.txt").write_text("Plain notes mention the word quokka once.\n")
    (folder / "page.html").write_bytes(HTML.replace(b"one", b"axolotl"))
    (folder / "animals.pdf").write_bytes(
        minimal_pdf(["Zebras on page one.", "Pangolins on page two."], "Animals")
    )
    (folder / "photo.png").write_bytes(b"\x89PNG")  # in a folder: passed over silently
    return folder


async def test_every_format_is_ingested_with_its_locations(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    seen: list[tuple[int, int, Outcome]] = []
    report = await kb.add(
        [write_library(tmp_path / "lib")], progress=lambda d, t, r: seen.append((d, t, r.outcome))
    )
    assert report.summary() == "4 added, 0 updated, 0 unchanged, 0 failed"
    assert seen == [(n, 4, Outcome.ADDED) for n in range(1, 5)]
    titles = {Path(d.source).name: (d.title, d.chunks) for d in await kb.list()}
    assert titles == {
        "animals.pdf": ("Animals", 2),
        "guide.md": ("Guide", 7),
        "notes.txt": ("notes", 1),
        "page.html": ("Web Page", 3),
    }
    expected = {
        "ocelot": ("Guide", "Appendix extra > Ocelots"),
        "apt": ("Guide", "Guide > Install > On Linux"),
        "quokka": ("notes", ""),
        "axolotl": ("Web Page", "Top > Child"),
        "pangolins": ("Animals", "page 2"),
    }
    for word, (title, location) in expected.items():
        best = (await kb.search(word))[0]
        assert (best.title, best.location) == (title, location), word
        assert best.source == (tmp_path / "lib").resolve().as_posix() + "/" + {
            "Guide": "guide.md", "notes": "notes.txt", "Web Page": "page.html",
            "Animals": "animals.pdf",
        }[title]  # fmt: skip


async def test_changed_file_replaces_its_chunks_unchanged_is_skipped(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    doc = tmp_path / "faq.md"
    doc.write_text("# FAQ\n\n## Old\n\nThe wombat answer.\n")
    assert (await kb.add([doc])).files[0].outcome is Outcome.ADDED
    assert (await kb.add([doc])).files[0].outcome is Outcome.UNCHANGED
    doc.write_text("# FAQ\n\n## New\n\nThe numbat answer.\n\n## More\n\nMore numbats.\n")
    result = (await kb.add([doc])).files[0]
    assert (result.outcome, result.chunks) == (Outcome.UPDATED, 2)
    assert await kb.search("wombat") == []
    assert {p.location for p in await kb.search("numbat")} == {"FAQ > New", "FAQ > More"}
    [info] = await kb.list()
    assert info.chunks == 2


async def test_failed_update_keeps_the_previous_version(kb: KnowledgeBase, tmp_path: Path) -> None:
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(minimal_pdf(["Capybara care."], "Manual"))
    await kb.add([pdf])
    pdf.write_bytes(b"%PDF-1.4 truncated")
    result = (await kb.add([pdf])).files[0]
    assert result.outcome is Outcome.FAILED and "not a readable PDF" in result.reason
    assert [p.location for p in await kb.search("capybara")] == ["page 1"]


async def test_unsupported_missing_and_empty_files_are_reported(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    (tmp_path / "deck.pptx").write_bytes(b"PK")
    (tmp_path / "empty.md").write_text("\n\n")
    report = await kb.add([tmp_path / "deck.pptx", tmp_path / "gone.md", tmp_path / "empty.md"])
    reasons = {Path(f.source).name: f.reason for f in report.files}
    assert all(f.outcome is Outcome.FAILED for f in report.files)
    assert reasons["deck.pptx"] == "unsupported file type .pptx"
    assert reasons["gone.md"] == "No such file or directory"
    assert reasons["empty.md"] == "only blank lines and spaces, no text"
    assert await kb.is_empty()


async def test_file_over_the_size_limit_is_reported(database_url: str, tmp_path: Path) -> None:
    await migrate.upgrade(database_url)
    engine = create_engine(database_url)
    try:
        big = tmp_path / "big.txt"
        big.write_text("x" * 2_000_001)
        report = await KnowledgeBase(engine, max_file_bytes=1_000_000).add([big])
    finally:
        await engine.dispose()
    assert report.files[0].reason == "larger than the 1 MB limit"


async def test_remove_a_file_or_everything_under_a_folder(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    lib = write_library(tmp_path / "lib")
    sibling = tmp_path / "lib2"  # shares the prefix "lib" but not the folder
    sibling.mkdir()
    (sibling / "keep.md").write_text("# Keep\n\nThe kept echidna.\n")
    await kb.add([lib, sibling])
    assert await kb.remove(lib / "notes.txt") == 1
    assert await kb.search("quokka") == []
    assert await kb.remove(lib / "notes.txt") == 0
    assert await kb.remove(str(lib) + "/") == 3
    assert await kb.search("pangolins") == []
    assert [Path(d.source).name for d in await kb.list()] == ["keep.md"]
    assert (await kb.search("echidna"))[0].title == "Keep"


async def test_distinctive_question_ranks_its_chunk_first(kb: KnowledgeBase) -> None:
    await kb.add([DOCS])
    passages = await kb.search("Can developers use the alembic command with alembic.ini?", k=3)
    assert len(passages) == 3
    assert passages[0].title == "History, schema migrations and the cache"
    assert passages[0].location.endswith("> Migrations")
    assert passages[0].score >= passages[1].score >= passages[2].score


@pytest.mark.parametrize(
    "query",
    ['"', "AND OR NOT", "*", ":", "NEAR(a b)", "col:x", "-x ^y", "a' OR 1=1 --",
     "日本語のテキスト", "Привет, мир!", "émigré", "", "   ", "😀", "x" * 5000,
     "(((", "a & b | !c <-> d", "NOT"],
)  # fmt: skip
async def test_hostile_queries_never_fail(kb: KnowledgeBase, tmp_path: Path, query: str) -> None:
    (tmp_path / "a.md").write_text("# A\n\nAnd or not, near columns. Привет, мир! émigré 日本語\n")
    await kb.add([tmp_path / "a.md"])
    passages = await kb.search(query)
    assert len(passages) <= 3


async def test_sample_is_loaded_once_into_an_empty_base(kb: KnowledgeBase, tmp_path: Path) -> None:
    off = KnowledgeSettings(sample_dir=str(DOCS), load_sample=False)
    assert await load_sample_if_empty(kb, off) is None
    missing = KnowledgeSettings(sample_dir=str(tmp_path / "nowhere"))
    assert await load_sample_if_empty(kb, missing) is None
    report = await load_sample_if_empty(kb, KnowledgeSettings(sample_dir=str(DOCS)))
    assert report is not None and report.count(Outcome.ADDED) >= 4 and not report.failed
    assert await load_sample_if_empty(kb, KnowledgeSettings(sample_dir=str(DOCS))) is None
    assert not await kb.is_empty()


async def test_downgrade_to_0001_removes_the_knowledge_base(database_url: str) -> None:
    await migrate.upgrade(database_url)
    await migrate.downgrade(database_url, "0001")
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert not {t for t in tables if t.startswith("kb_")}
    assert "messages" in tables
    await migrate.upgrade(database_url)
    assert await migrate.current(database_url) == migrate.head()


def test_kb_command_adds_lists_and_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))  # the model's files go there
    lib = write_library(tmp_path / "lib")
    (tmp_path / "nope.docx").write_bytes(b"PK\x03\x04")  # a type Parley does not read
    assert main(["kb", "add", str(lib), str(tmp_path / "nope.docx")]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == "4 added, 0 updated, 0 unchanged, 1 failed"
    assert "[5/5] failed" in err and "unsupported file type .docx" in err
    assert main(["kb", "list"]) == 0
    out, _ = capsys.readouterr()
    assert "Animals" in out and out.strip().endswith("4 documents, 13 chunks")
    assert (tmp_path / "home" / "models" / "tokenizers").is_dir()
    # A script's unset variable: "" named the current folder, and removed all of it.
    monkeypatch.chdir(lib)
    for blank in ("", "  "):
        assert main(["kb", "remove", blank]) == 2
        assert capsys.readouterr().err == (
            "parley: kb remove needs a path; an empty one removes nothing\n"
        )
    assert main(["kb", "list"]) == 0
    assert capsys.readouterr().out.strip().endswith("4 documents, 13 chunks")
    assert main(["kb", "remove", str(lib)]) == 0
    assert capsys.readouterr().out.strip() == "removed 4 documents"
    assert main(["kb", "remove", str(lib)]) == 1
    assert "nothing in the knowledge base" in capsys.readouterr().err
