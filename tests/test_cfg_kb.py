"""Collections from the command line: `parley kb add --collection` says when it moves a
document out of another collection, and `parley kb list` shows (and filters by) collection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.cli import main
from bot.knowledge.store import KnowledgeBase
from bot.knowledge.types import Outcome
from bot.storage import migrate
from bot.storage.database import create_engine


@pytest.fixture
async def kb(database_url: str) -> AsyncIterator[KnowledgeBase]:
    await migrate.upgrade(database_url)  # the SQLite one arrives unmigrated
    engine = create_engine(database_url)
    try:
        yield KnowledgeBase(engine)
    finally:
        await engine.dispose()


async def test_adding_to_another_collection_reports_the_move(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    faq = tmp_path / "faq.md"
    faq.write_text("# FAQ\n\nReturns are free within 30 days.\n")
    first = (await kb.add([faq])).files[0]
    assert (first.outcome, first.moved_from, first.move) == (Outcome.ADDED, None, "")

    to_shop = await kb.add([faq], collection="shop")
    moved = to_shop.files[0]
    assert moved.outcome is Outcome.UPDATED
    assert moved.move == "moved from the default collection to 'shop'"
    assert to_shop.moved == [moved]
    assert [d.collection for d in await kb.list()] == ["shop"]
    assert await kb.list("") == []
    assert [d.title for d in await kb.list("shop")] == ["FAQ"]

    again = (await kb.add([faq], collection="shop")).files[0]
    assert (again.outcome, again.move) == (Outcome.UNCHANGED, "")
    back = (await kb.add([faq])).files[0]
    assert back.move == "moved from 'shop' to the default collection"
    assert [d.collection for d in await kb.list("")] == [""]


def test_kb_commands_show_collections_and_the_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    (kb_dir / "faq.md").write_text("# FAQ\n\nReturns are free within 30 days.\n")
    (kb_dir / "about.md").write_text("# About\n\nWe sell tea.\n")
    source = (kb_dir / "faq.md").resolve().as_posix()
    assert main(["kb", "add", str(kb_dir)]) == 0
    capsys.readouterr()

    assert main(["kb", "add", "--collection", "shop", str(kb_dir / "faq.md")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "0 added, 1 updated, 0 unchanged, 0 failed",
        f"{source}: moved from the default collection to 'shop'",
    ]
    assert f"updated {source} (1 chunk), moved from the default collection to 'shop'" in err

    assert main(["kb", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CHUNKS", "SIZE", "UPDATED", "COLLECTION", "TITLE", "(SOURCE)"]
    assert "  (default)   About  (" in lines[1] and "  shop        FAQ  (" in lines[2]
    assert lines[-1] == "2 documents, 2 chunks"

    assert main(["kb", "list", "--collection", "shop"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "FAQ" in lines[1] and lines[-1] == "1 document, 1 chunk"
    assert main(["kb", "list", "--collection", "nope"]) == 0
    assert capsys.readouterr().out == "no documents in 'nope'\n"


def test_kb_list_keeps_its_columns_for_every_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIZE was 7 characters wide and "360.0 kB" 8: every column after it moved one to the
    right on that line. A size that rounds to 1000 of a unit is written in the next one
    ("1.0 MB", not "1000.0 kB", 9 characters)."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")
    kb_dir = tmp_path / "kb"
    kb_dir.mkdir()
    paragraph = "Returns are free within thirty days of delivery, by post or in a shop.\n\n"
    sizes = {"small.md": 20, "mid.md": 360_000, "edge.md": 999_960}
    for name, size in sizes.items():
        text = f"# {name}\n\n" + paragraph * (size // len(paragraph) + 1)
        (kb_dir / name).write_text(text[:size])
    assert main(["kb", "add", str(kb_dir)]) == 0
    capsys.readouterr()

    assert main(["kb", "list"]) == 0
    header, *rows, total = capsys.readouterr().out.splitlines()
    assert total.startswith("3 documents, ")
    column = header.index("UPDATED")
    shown = {row.split()[-1].strip("()").rsplit("/", 1)[-1]: row for row in rows}
    assert set(shown) == set(sizes)
    for row in shown.values():
        assert row[column - 2 : column] == "  " and row[column : column + 2] == "20", (header, row)
    assert header.index("SIZE") + len("SIZE") == shown["mid.md"].index("kB") + len("kB")
    assert "360.0 kB  " in shown["mid.md"] and "  1.0 MB  " in shown["edge.md"]
    assert "     20 B  " in shown["small.md"]
