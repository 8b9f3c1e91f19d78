"""The knowledge-base evaluation: its question sets and the development set are well formed
(every gold section exists in the vendored documents), and a small slice of
`python -m bench.kb_bench` runs end to end, on the evaluation sets and with --dev."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import kb_bench
from bot.knowledge.embeddings import WordLlamaEmbedder
from bot.knowledge.loaders import load
from tests import services
from tests.skills_helpers import StructuredBackend

KINDS = {"short", "long", "typo", "error", "paraphrase"}


FOLDERS = [*kb_bench.set_folders(dev=False).values(), *kb_bench.set_folders(dev=True).values()]


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_gold_section_exists_and_every_kind_is_asked(folder: Path) -> None:
    docs = folder / "docs"
    locations = {
        f"docs/{path.name}": [s.location for s in load(path.read_bytes(), path).sections]
        for path in docs.glob("*.md")
    }
    questions = kb_bench.load_questions(folder, None)
    assert len(questions) >= 60
    assert {q.kind for q in questions} == KINDS
    for q in questions:
        for file, heading in q.gold:
            assert any(
                loc == heading or loc.endswith(f" > {heading}") for loc in locations[file]
            ), (q.text, file, heading)
    assert any(folder.glob("LICENSE*"))


def test_quick_slice_runs_and_ends_with_the_worst_recall(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--quick", "--only", "sqlite", "--questions", "6", "--chunks", "150", "--repeat", "1"]
    assert kb_bench.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"recall@3 [01]\.\d{3}", out[-1])
    rows = [row for row in map(str.split, out) if row[:1] and row[0] in kb_bench.SETS]
    rows = [row for row in rows if row[1] == "sqlite"]  # the quality table, not the kinds
    systems = {(row[0], row[2]) for row in rows}
    assert systems == {(s, c) for s in kb_bench.SETS for c in [*kb_bench.CONFIGURATIONS, "bm25"]}
    assert any("150 generated chunks" in line for line in out)


@pytest.mark.postgres
def test_quick_slice_on_postgres_measures_it(
    postgres_url: str,  # requested so that the test skips (or fails under CI) without PostgreSQL
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PostgreSQL half of the slice: its own database on the test server, every system
    measured there, and a recall only from what was measured."""
    monkeypatch.setenv("PARLEY_BENCH_POSTGRES_URL", services.POSTGRES_ADMIN_URL)
    argv = ["--quick", "--only", "postgres", "--questions", "3", "--chunks", "60", "--repeat", "1"]
    assert kb_bench.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"recall@3 [01]\.\d{3}", out[-1])
    rows = [row for row in map(str.split, out) if row[:1] and row[0] in kb_bench.SETS]
    systems = {(row[0], row[2]) for row in rows if row[1] == "postgres"}
    assert systems == {(s, c) for s in kb_bench.SETS for c in [*kb_bench.CONFIGURATIONS, "bm25"]}
    assert not any(row[1] == "sqlite" for row in rows)
    assert any(line.startswith("postgres") and "60 generated chunks" in line for line in out)


def test_quick_slice_with_nothing_to_measure_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--quick skips a PostgreSQL that does not answer; with --only postgres nothing is left,
    so the run fails instead of printing a recall it never measured."""
    monkeypatch.setenv("PARLEY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    assert kb_bench.main(["--quick", "--only", "postgres", "--questions", "2"]) == 2
    captured = capsys.readouterr()
    assert "recall" not in captured.out
    [line] = captured.err.strip().splitlines()
    assert line.startswith("PostgreSQL is not available (")


def test_dev_slice_measures_the_development_set_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--dev", "--only", "sqlite", "--questions", "4", "--chunks", "100", "--repeat", "1"]
    assert kb_bench.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    measured = {row[0] for row in map(str.split, out) if row[1:2] == ["sqlite"]}
    assert measured == set(kb_bench.DEV_SETS)
    assert re.fullmatch(r"recall@3 [01]\.\d{3}", out[-1])


def test_sets_stay_small() -> None:
    for folder in FOLDERS:
        size = sum(p.stat().st_size for p in folder.rglob("*"))
        assert size < 400_000, folder.name


async def test_rerank_rows_follow_the_model_s_order(tmp_path: Path) -> None:
    """--rerank's measurement with a model whose schema replies put search's second passage
    first: the ranks it records are the model's, not search's."""
    folder = kb_bench.SETS_DIR / "attrs"
    questions = kb_bench.load_questions(folder, 4)
    backend = StructuredBackend('{"relevant": [2, 1]}')
    embedder = WordLlamaEmbedder(tmp_path / "models")
    results = await kb_bench.run_quality("sqlite", folder, questions, embedder, tmp_path, backend)
    by_name = {q.name: q for q in results}
    assert list(by_name) == ["parley", "rerank", "fulltext", "db-fts"]
    assert len(backend.requests) == len(questions)  # the warm-up search is not reranked
    for search, reranked in zip(by_name["parley"].ranks, by_name["rerank"].ranks, strict=True):
        # a gold section among the two it kept stays there; beyond them: not found
        assert (reranked in (1, 2)) if search in (1, 2) else reranked is None
