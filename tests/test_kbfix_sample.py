"""The sample knowledge base is only what Parley loaded as the sample: an operator's own
`docs/` folder, or Parley's own docs/ added on purpose, is never removed as "the sample"
(through the real `parley kb add`, on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.cli import main
from bot.knowledge import KnowledgeBase, load_sample_if_empty
from bot.knowledge.sample import PROJECT_ROOT
from bot.settings import KnowledgeSettings
from bot.storage import migrate
from bot.storage.database import create_engine

REMOVED = "removed the sample documents"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project of the operator's, with a `docs/` folder of its own, as the working directory."""
    root = tmp_path / "myproj"
    (root / "docs").mkdir(parents=True)
    (root / "manuals").mkdir()
    (root / "docs" / "faq.md").write_text("# Refund policy\n\nRefunds within 30 days.\n")
    (root / "manuals" / "install.md").write_text("# Install\n\nInstall with care.\n")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite database, the only kind Parley loads its sample into."""
    url = f"sqlite+aiosqlite:///{tmp_path}/kb.db"
    monkeypatch.setenv("PARLEY_DATABASE__URL", url)
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")
    asyncio.run(migrate.upgrade(url))
    return url


def listed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    assert main(["kb", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:-1]  # the header and the count aside
    return [Path(row.rsplit("(", 1)[1].rstrip(")")).name for row in rows]


def load_sample(url: str) -> int:
    """What `parley run` / `parley chat` do at start on SQLite: the documents loaded."""

    async def run() -> int:
        engine = create_engine(url)
        try:
            report = await load_sample_if_empty(KnowledgeBase(engine), KnowledgeSettings())
            return len(report.files) if report else 0
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.mark.parametrize("collection", [[], ["--collection", "shop"]])
def test_an_own_docs_folder_added_with_another_stays(
    kb_cli_url: str, project: Path, capsys: pytest.CaptureFixture[str], collection: list[str]
) -> None:
    assert main(["kb", "add", *collection, "docs/", "manuals/"]) == 0
    out = capsys.readouterr().out
    assert "2 added" in out and REMOVED not in out
    assert listed(capsys) == ["faq.md", "install.md"]


def test_an_own_docs_folder_stays_with_load_sample_off(
    kb_cli_url: str,
    project: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARLEY_KNOWLEDGE__LOAD_SAMPLE", "false")
    assert main(["kb", "add", "manuals/"]) == 0
    assert main(["kb", "add", "docs/"]) == 0
    assert REMOVED not in capsys.readouterr().out
    assert listed(capsys) == ["faq.md", "install.md"]


def test_parley_s_own_docs_added_on_purpose_are_the_operator_s(
    kb_cli_url: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    guide = sorted(p.name for p in (PROJECT_ROOT / "docs").glob("*.md"))
    assert main(["kb", "add", "manuals/"]) == 0
    assert main(["kb", "add", str(PROJECT_ROOT / "docs")]) == 0
    out = capsys.readouterr().out
    assert f"{len(guide)} added" in out and REMOVED not in out
    assert sorted(listed(capsys)) == sorted([*guide, "install.md"])


def test_a_start_in_a_project_keeps_its_docs_folder(
    sqlite_url: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kb", "add", str(project / "manuals"), str(project / "docs")]) == 0
    assert (
        load_sample(sqlite_url) == 0
    )  # the knowledge base is not empty: nothing loaded, nothing gone
    assert listed(capsys) == ["faq.md", "install.md"]


def test_the_sample_parley_loaded_gives_way_and_comes_from_parley_s_folder(
    sqlite_url: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    guide = sorted(p.name for p in (PROJECT_ROOT / "docs").glob("*.md"))
    assert load_sample(sqlite_url) == len(
        guide
    )  # Parley's guide, not the working directory's docs/
    assert "faq.md" not in listed(capsys)
    assert main(["kb", "add", "docs/"]) == 0
    assert REMOVED in capsys.readouterr().out
    assert listed(capsys) == ["faq.md"]


def test_the_sample_re_added_on_purpose_becomes_the_operator_s(
    sqlite_url: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    guide = sorted(p.name for p in (PROJECT_ROOT / "docs").glob("*.md"))
    load_sample(sqlite_url)
    assert main(["kb", "add", str(PROJECT_ROOT / "docs")]) == 0
    assert f"{len(guide)} updated" in capsys.readouterr().out
    assert main(["kb", "add", "manuals/"]) == 0
    assert REMOVED not in capsys.readouterr().out
    assert sorted(listed(capsys)) == sorted([*guide, "install.md"])
