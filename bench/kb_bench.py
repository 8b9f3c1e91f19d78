"""Knowledge base: retrieval quality on documentation nobody on the project wrote, against a
BM25 baseline, and speed at 10,000 chunks, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.kb_bench            # everything; exit 1 when a target fails
    .venv/bin/python -m bench.kb_bench --quick    # a slice (the CI test runs it)
    .venv/bin/python -m bench.kb_bench --dev      # the development set instead
    .venv/bin/python -m bench.kb_bench --embeddings-url http://127.0.0.1:8001/v1 \
        --embedding-model minilm                  # a served embedding model, not WordLlama

Ranking changes are tuned on the development set (bench/data/kb-dev/, Starlette's docs) and
on Parley's own docs (--tune); the evaluation sets are measured to report, never to choose.

1. Quality, per evaluation set (bench/data/kb/<set>/, see its README) and database: the set's
   docs/ are added with `KnowledgeBase.add`, each question is searched once, and a question is
   found at rank r when the r-th passage comes from one of its gold sections (fixed before the
   first measurement). Three configurations of Parley: `parley` (the defaults: BM25 in memory
   fused with WordLlama embeddings), `fulltext` (knowledge.semantic = false) and `db-fts` (the
   database's own engine, used over knowledge.max_memory_chunks). The baseline is
   BM25 (bm25s, English stop words) over the very same chunks, heading path + text, ranking
   chunks as a plain retriever would.
2. Speed, per database: Markdown files generated from the sets' own vocabulary until there are
   --chunks chunks are added (with embeddings, timed), then every question is searched
   --repeat times (p50/p95 after one warm-up search that builds the in-memory index; the build
   is timed too).

Targets (fixed before measuring): recall@3 >= 0.85 on every set and database, and at least
0.15 above BM25; query p95 < 50 ms and ingest < 30 s at 10,000 chunks. The last line printed is
`recall@3 <value>` for the worst set and database of the default configuration. PostgreSQL
comes from PARLEY_BENCH_POSTGRES_URL (an admin URL; default
postgresql://postgres@127.0.0.1:5432/postgres); the bench creates and drops its own database.
A server that does not answer is a failure in a full run (exit 2, one line) and a skip with
--quick while SQLite is measured; `--quick --only postgres` has nothing else to measure, so it
fails too: a recall is printed only when it was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bm25s

from backends.base import Backend
from backends.factory import build_backend
from bench.entry import positive_int, run_main
from bot.knowledge import KnowledgeBase, Passage
from bot.knowledge.chunker import chunk_sections
from bot.knowledge.embeddings import Embedder, ServedEmbedder, WordLlamaEmbedder
from bot.knowledge.loaders import load
from bot.knowledge.rerank import rerank
from bot.knowledge.types import AnswerPolicy, SearchOptions
from bot.settings import Settings
from bot.storage import migrate
from bot.storage.database import create_engine

ROOT = Path(__file__).resolve().parents[1]
SETS_DIR = ROOT / "bench" / "data" / "kb"
SETS = ("click", "attrs")
# The development set (--dev): the one that ranking changes are tuned on, so that the
# evaluation sets above are measured, never tuned on (bench/data/kb-dev/README.md).
DEV_DIR = ROOT / "bench" / "data" / "kb-dev"
DEV_SETS = ("starlette",)
TUNING_QUESTIONS = ROOT / "bench" / "data" / "docs_questions.json"
TUNING_DOCS = [ROOT / "README.md", ROOT / "docs"]
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECTIONS_PER_FILE = 50

RECALL_TARGET = 0.85
MARGIN_OVER_BM25 = 0.15
P95_TARGET_MS = 50.0
INGEST_TARGET_S = 30.0
SCALE_CHUNKS = 10_000


@dataclass(frozen=True)
class Question:
    text: str
    kind: str
    gold: list[tuple[str, str]]  # (end of the file's path, heading path suffix)

    def found(self, source: str, location: str) -> bool:
        return any(
            source.endswith(f"/{file}")
            and (location == heading or location.endswith(f" > {heading}"))
            for file, heading in self.gold
        )


@dataclass
class Quality:
    name: str
    ranks: list[int | None] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    def recall(self, k: int, kind: str | None = None) -> float:
        ranks = [r for r, t in zip(self.ranks, self.kinds, strict=True) if kind in (None, t)]
        return sum(1 for r in ranks if r is not None and r <= k) / max(len(ranks), 1)

    @property
    def mrr(self) -> float:
        return sum(1 / r for r in self.ranks if r is not None) / len(self.ranks)


@dataclass
class Speed:
    database: str
    chunks: int = 0
    ingest_s: float = 0.0
    index_build_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


def set_folders(dev: bool) -> dict[str, Path]:
    """The sets measured, by name: the evaluation sets, or with `dev` the development set."""
    if dev:
        return {name: DEV_DIR / name for name in DEV_SETS}
    return {name: SETS_DIR / name for name in SETS}


def load_questions(folder: Path, limit: int | None) -> list[Question]:
    raw = json.loads((folder / "questions.json").read_text())["questions"]
    questions = [
        Question(q["question"], q["kind"], [(f"docs/{g['file']}", g["heading"]) for g in q["gold"]])
        for q in raw
    ]
    return questions[:limit]


def load_tuning_questions() -> list[Question]:
    """Questions about Parley's own README and docs/: the set the ranking's parameters were
    chosen on (--tune), so that the evaluation sets stay unseen."""
    raw = json.loads(TUNING_QUESTIONS.read_text())["questions"]
    return [Question(q["question"], "tuning", [(q["source"], q["heading"])]) for q in raw]


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


# --- databases ----------------------------------------------------------------------------


def admin_url() -> str:
    """PostgreSQL's admin URL, read when it is needed (a test points it elsewhere)."""
    return os.environ.get("PARLEY_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL)


@asynccontextmanager
async def database(kind: str, tmp: Path) -> AsyncIterator[str]:
    """A fresh, migrated database URL of `kind`, removed afterwards."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp}/kb-{uuid.uuid4().hex[:8]}.db"
        await migrate.upgrade(url)
        yield url
        return
    import asyncpg

    admin = await asyncpg.connect(admin_url(), timeout=5)
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = admin_url().rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        url = f"{base}/{name}"
        await migrate.upgrade(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# The configurations measured: Parley's defaults, without semantic search, and the fallback
# over knowledge.max_memory_chunks (the database's own full-text engine alone).
CONFIGURATIONS = {
    "parley": SearchOptions(),
    "fulltext": SearchOptions(semantic_weight=0),
    "db-fts": SearchOptions(semantic_weight=0, max_memory_chunks=0),
}


@asynccontextmanager
async def knowledge_base(
    url: str, embedder: Embedder | None, options: SearchOptions
) -> AsyncIterator[KnowledgeBase]:
    engine = create_engine(url)
    try:
        yield KnowledgeBase(engine, embedder=embedder, options=options)
    finally:
        await engine.dispose()


# --- quality ------------------------------------------------------------------------------


async def measure_parley(
    name: str, kb: KnowledgeBase, questions: list[Question], k: int = 10
) -> Quality:
    quality = Quality(name)
    await kb.search("warm up", k=k)  # builds the in-memory index, timed in the speed part
    for q in questions:
        started = time.perf_counter()
        passages = await kb.search(q.text, k=k)
        quality.latencies_ms.append((time.perf_counter() - started) * 1000)
        record(quality, q, [(p.source, p.location) for p in passages], passages)
    return quality


def record(
    quality: Quality,
    q: Question,
    found: list[tuple[str, str]],
    passages: Sequence[Passage] = (),
) -> None:
    rank = next((n for n, (s, loc) in enumerate(found, 1) if q.found(s, loc)), None)
    quality.ranks.append(rank)
    quality.kinds.append(q.kind)
    if rank is None or rank > 3:
        got = passages[0].citation if passages else (found[0][1] if found else "nothing")
        quality.misses.append(f"[{q.kind}] {q.text[:70]!r}: got {got!r}")


def measure_bm25(docs: Path, questions: list[Question], k: int = 10) -> Quality:
    """BM25 over the chunks Parley makes of the same files (heading path + text)."""
    chunks: list[tuple[str, str, str]] = []  # (source, location, text)
    for path in sorted(docs.rglob("*.md")):
        document = load(path.read_bytes(), path)
        for chunk in chunk_sections(document.sections):
            chunks.append((path.resolve().as_posix(), chunk.location, chunk.text))
    retriever = bm25s.BM25()
    corpus = [f"{location}\n{text}" for _, location, text in chunks]
    retriever.index(
        bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False
    )
    quality = Quality("bm25")
    for q in questions:
        started = time.perf_counter()
        tokens = bm25s.tokenize([q.text], stopwords="en", show_progress=False)
        top = min(k, len(chunks))
        ids, _ = retriever.retrieve(tokens, k=top, show_progress=False)
        quality.latencies_ms.append((time.perf_counter() - started) * 1000)
        found = [(chunks[i][0], chunks[i][1]) for i in ids[0]]
        record(quality, q, found)
    return quality


async def measure_rerank(
    kb: KnowledgeBase, backend: Backend, questions: list[Question], candidates: int
) -> Quality:
    """The defaults, then the served model reordering the best `candidates` passages
    (bot.knowledge.rerank); a passage it leaves out counts as not found (strict grounding).
    Latency includes the model's call."""
    quality = Quality("rerank")
    await kb.search("warm up")
    for q in questions:
        started = time.perf_counter()
        found = await kb.search(q.text, k=candidates)
        ranked = (await rerank(backend, q.text, found)).passages
        quality.latencies_ms.append((time.perf_counter() - started) * 1000)
        record(quality, q, [(p.source, p.location) for p in ranked], ranked)
    return quality


async def run_quality(
    kind: str, folder: Path, questions: list[Question], embedder: Embedder, tmp: Path,
    backend: Backend | None = None,
) -> list[Quality]:  # fmt: skip
    docs, set_name = folder / "docs", folder.name
    results = []
    for label, options in CONFIGURATIONS.items():
        model = embedder if options.semantic_weight > 0 else None
        async with database(kind, tmp) as url, knowledge_base(url, model, options) as kb:
            report = await kb.add([docs])
            if report.failed:
                raise RuntimeError(
                    f"{set_name}: {report.failed[0].source}: {report.failed[0].reason}"
                )
            results.append(await measure_parley(label, kb, questions))
            if backend is not None and label == "parley":
                candidates = AnswerPolicy().rerank_candidates
                results.append(await measure_rerank(kb, backend, questions, candidates))
    return results


# --- speed --------------------------------------------------------------------------------


def vocabulary() -> tuple[list[str], list[int]]:
    words: Counter[str] = Counter()
    for name in SETS:
        for path in sorted((SETS_DIR / name / "docs").glob("*.md")):
            words.update(re.findall(r"[A-Za-z]{2,}", path.read_text().lower()))
    return list(words), list(words.values())


def write_corpus(folder: Path, chunks: int, seed: int = 7) -> None:
    """Markdown files of SECTIONS_PER_FILE sections, one chunk each (~250 tokens), drawn
    from the evaluation sets' word frequencies, so queries hit many chunks as in real docs."""
    rng = random.Random(seed)
    words, weights = vocabulary()
    for file_no in range(0, chunks, SECTIONS_PER_FILE):
        parts = [f"# Generated document {file_no // SECTIONS_PER_FILE}\n"]
        for section in range(min(SECTIONS_PER_FILE, chunks - file_no)):
            title = " ".join(rng.choices(words, weights, k=3))
            sentences = [" ".join(rng.choices(words, weights, k=15)) + "." for _ in range(11)]
            parts.append(f"## {section} {title}\n\n" + " ".join(sentences) + "\n")
        (folder / f"gen_{file_no:06d}.md").write_text("\n".join(parts))


async def run_speed(
    kind: str, corpus: Path, questions: list[Question], embedder: Embedder,
    tmp: Path, repeat: int,
) -> Speed:  # fmt: skip
    speed = Speed(kind)
    async with database(kind, tmp) as url, knowledge_base(url, embedder, SearchOptions()) as kb:
        started = time.perf_counter()
        report = await kb.add([corpus])
        speed.ingest_s = time.perf_counter() - started
        speed.chunks = sum(f.chunks for f in report.files)
        for name in SETS:
            await kb.add([SETS_DIR / name / "docs"])
        started = time.perf_counter()
        await kb.search("warm up")
        speed.index_build_s = time.perf_counter() - started
        for _ in range(repeat):
            for q in questions:
                t0 = time.perf_counter()
                await kb.search(q.text, k=3)
                speed.latencies_ms.append((time.perf_counter() - t0) * 1000)
    return speed


# --- report -------------------------------------------------------------------------------


@dataclass
class Verdicts:
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> str:
        if not ok:
            self.failures.append(what)
        return "ok" if ok else "FAIL"


def print_quality(
    table: dict[tuple[str, str], list[Quality]], bm25: dict[str, Quality],
    verdicts: Verdicts, check: bool, show: Callable[[str], None],
) -> float | None:  # fmt: skip
    show(f"{'set':7} {'database':10} {'system':9} {'R@1':>6} {'R@3':>6} {'MRR':>6} "
         f"{'p50 ms':>7} {'p95 ms':>7}  target")  # fmt: skip
    worst: float | None = None  # None: no configuration was measured
    for (set_name, db), results in table.items():
        base = bm25[set_name]
        for quality in [*results, base]:
            mark = ""
            if quality.name == "parley":
                r3 = quality.recall(3)
                worst = r3 if worst is None else min(worst, r3)
                if check:
                    ok = r3 >= RECALL_TARGET and r3 >= base.recall(3) + MARGIN_OVER_BM25
                    mark = verdicts.check(ok, f"recall@3 {set_name}/{db} {r3:.3f}")
            show(f"{set_name:7} {db:10} {quality.name:9} {quality.recall(1):6.3f} "
                 f"{quality.recall(3):6.3f} {quality.mrr:6.3f} "
                 f"{statistics.median(quality.latencies_ms):7.2f} "
                 f"{percentile(quality.latencies_ms, 0.95):7.2f}  {mark}")  # fmt: skip
    return worst


def print_kinds(
    table: dict[tuple[str, str], list[Quality]], bm25: dict[str, Quality],
    show: Callable[[str], None],
) -> None:  # fmt: skip
    """recall@3 by kind of question, Parley's defaults against BM25 (first database)."""
    kinds = sorted({kind for quality in bm25.values() for kind in quality.kinds})
    show(f"recall@3 by kind   {'  '.join(f'{k:>10}' for k in kinds)}")
    shown: set[str] = set()
    for (set_name, _), results in table.items():
        if set_name in shown:
            continue
        shown.add(set_name)
        for quality in [results[0], bm25[set_name]]:
            cells = "  ".join(f"{quality.recall(3, kind):10.3f}" for kind in kinds)
            show(f"{set_name:7} {quality.name:10} {cells}")


def print_misses(table: dict[tuple[str, str], list[Quality]], show: Callable[[str], None]) -> None:
    for (set_name, db), results in table.items():
        for quality in results:
            if quality.name == "parley" and quality.misses:
                show(f"\nnot in the top 3 ({set_name}, {db}, {quality.name}):")
                for miss in quality.misses:
                    show(f"  {miss}")


def print_speed(
    speeds: list[Speed], verdicts: Verdicts, check: bool, show: Callable[[str], None]
) -> None:
    for s in speeds:
        p95 = percentile(s.latencies_ms, 0.95)
        ingest = (
            verdicts.check(s.ingest_s < INGEST_TARGET_S, f"ingest {s.database}") if check else ""
        )
        query = verdicts.check(p95 < P95_TARGET_MS, f"query p95 {s.database}") if check else ""
        show(f"{s.database:10} {s.chunks} generated chunks: ingest {s.ingest_s:.1f} s "
             f"({s.chunks / s.ingest_s:.0f} chunks/s, with embeddings) {ingest}; "
             f"index build {s.index_build_s * 1000:.0f} ms; query p50 "
             f"{statistics.median(s.latencies_ms):.1f} ms p95 {p95:.1f} ms "
             f"({len(s.latencies_ms)} queries) {query}")  # fmt: skip


def tuning_grid() -> list[SearchOptions]:
    """The fusion weight and similarity floor, then semantic feedback at the default weight."""
    grid = [
        SearchOptions(semantic_weight=w, min_similarity=m, feedback_chunks=0)
        for w in (0.0, 0.25, 0.5, 0.75, 1.0)
        for m in (0.2, 0.25, 0.3)
    ]
    for weight in (0.25, 0.5, 1.0):
        grid += [
            SearchOptions(semantic_weight=weight, feedback_chunks=n, feedback_weight=f)
            for n in (3, 5, 10)
            for f in (0.5, 1.0, 2.0)
        ]
    grid += [SearchOptions(semantic_weight=w, title_vectors=True) for w in (0.25, 0.5, 1.0)]
    grid += [SearchOptions(semantic_weight=w, part_vectors=True) for w in (0.25, 0.5, 1.0)]
    grid += [
        SearchOptions(semantic_weight=w, part_vectors=True, title_vectors=False)
        for w in (0.25, 0.5)
    ]
    return grid


async def tune(embedder: WordLlamaEmbedder, tmp: Path) -> None:
    """Recall on Parley's own docs for a grid of fusion parameters (SQLite): how the defaults
    in SearchOptions were chosen, without looking at the evaluation sets."""
    questions = load_tuning_questions()
    async with database("sqlite", tmp) as url:
        engine = create_engine(url)
        try:
            await KnowledgeBase(engine, embedder=embedder).add(TUNING_DOCS)
            print(f"tuning set: Parley's docs, {len(questions)} questions")
            for options in tuning_grid():
                kb = KnowledgeBase(engine, embedder=embedder, options=options)
                q = await measure_parley("parley", kb, questions)
                print(f"  semantic_weight {options.semantic_weight:4.2f} min_similarity "
                      f"{options.min_similarity:.2f} feedback {options.feedback_chunks:2d} x "
                      f"{options.feedback_weight:.2f} titles {options.title_vectors:d} "
                      f"parts {options.part_vectors:d}: "
                      f"R@1 {q.recall(1):.3f} "
                      f"R@3 {q.recall(3):.3f} MRR {q.mrr:.3f}")  # fmt: skip
        finally:
            await engine.dispose()


async def postgres_available() -> str:
    try:
        import asyncpg

        conn = await asyncpg.connect(admin_url(), timeout=5)
    except Exception as exc:  # any reason the server cannot be used is reported
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return ""


async def run(args: argparse.Namespace) -> int:
    if args.tune:
        with tempfile.TemporaryDirectory() as tmp_name:
            await tune(WordLlamaEmbedder(Path(tmp_name) / "models"), Path(tmp_name))
        return 0
    limit = args.questions
    chunks = args.chunks or (1000 if args.quick else SCALE_CHUNKS)
    kinds = ["sqlite", "postgres"] if args.only is None else [args.only]
    if "postgres" in kinds and (reason := await postgres_available()):
        if not args.quick or kinds == ["postgres"]:  # never a recall nobody measured
            print(f"PostgreSQL is not available ({reason})", file=sys.stderr)
            return 2
        print(f"PostgreSQL skipped: {reason}")
        kinds.remove("postgres")
    check = not args.quick and not args.dev and chunks >= SCALE_CHUNKS and limit is None
    backend = None
    if args.rerank:
        backend = build_backend(Settings().backend)
        if backend is None:
            print("--rerank needs a model: set [backend] (kind and model)", file=sys.stderr)
            return 2
        await backend.start()
    try:
        return await measure_all(args, kinds, chunks, check, backend)
    finally:
        if backend is not None:
            await backend.aclose()


async def measure_all(
    args: argparse.Namespace, kinds: list[str], chunks: int, check: bool,
    backend: Backend | None,
) -> int:  # fmt: skip
    limit = args.questions
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        embedder = bench_embedder(args, tmp)
        folders = set_folders(args.dev)
        questions = {name: load_questions(folder, limit) for name, folder in folders.items()}
        bm25 = {
            name: measure_bm25(folder / "docs", questions[name]) for name, folder in folders.items()
        }
        table = {
            (name, kind): await run_quality(kind, folder, questions[name], embedder, tmp, backend)
            for name, folder in folders.items()
            for kind in kinds
        }
        corpus = tmp / "corpus"
        corpus.mkdir()
        write_corpus(corpus, chunks)
        every = [q for name in folders for q in questions[name]]
        speeds = [
            await run_speed(kind, corpus, every, embedder, tmp, args.repeat) for kind in kinds
        ]
    verdicts = Verdicts()
    counts = ", ".join(f"{name} {len(questions[name])}" for name in folders)
    print(f"questions: {counts}; ranks taken from the top 10")
    worst = print_quality(table, bm25, verdicts, check, print)
    print()
    print_kinds(table, bm25, print)
    print()
    print_speed(speeds, verdicts, check, print)
    if args.misses:
        print_misses(table, print)
    if args.dev:
        print("\n(development set: targets are checked on the evaluation sets only)")
    elif not check:
        print("\n(targets are checked only in a full run)")
    elif verdicts.failures:
        print(f"\ntargets failed: {'; '.join(verdicts.failures)}")
    if worst is None:
        print("nothing measured: no configuration of Parley ran", file=sys.stderr)
        return 1
    print(f"recall@3 {worst:.3f}")
    return 1 if verdicts.failures else 0


def bench_embedder(args: argparse.Namespace, tmp: Path) -> Embedder:
    """The bundled WordLlama, or with --embeddings-url a served model (vLLM serving an
    embedding model), which replaces it everywhere, as knowledge.embedding_base_url does."""
    if args.embeddings_url:
        return ServedEmbedder(args.embeddings_url, args.embedding_model, timeout_s=600)
    return WordLlamaEmbedder(tmp / "models")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a slice: 1,000 chunks, no targets")
    parser.add_argument(
        "--questions", type=positive_int, help="only the first N questions of each set"
    )
    parser.add_argument("--chunks", type=positive_int, help="generated chunks for the speed part")
    parser.add_argument("--repeat", type=positive_int, default=3, help="passes over the questions")
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--tune", action="store_true", help="parameter grid on Parley's docs")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="the development set (bench/data/kb-dev), not the evaluation sets",
    )
    parser.add_argument("--misses", action="store_true", help="list the questions missed")
    parser.add_argument(
        "--rerank", action="store_true", help="also rerank with the model [backend] configures"
    )
    parser.add_argument(
        "--embeddings-url",
        help="an OpenAI-compatible embeddings server (its /v1 URL) instead of WordLlama",
    )
    parser.add_argument("--embedding-model", default="", help="the model that server serves")
    args = parser.parse_args(argv)
    if args.embeddings_url and not args.embedding_model:
        parser.error("--embeddings-url needs --embedding-model")
    return asyncio.run(run(args))


if __name__ == "__main__":
    run_main("bench.kb_bench", main)
