"""Knowledge base: retrieval recall, ingestion speed and query latency, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.kb_bench                 # both databases, 10,000 chunks
    .venv/bin/python -m bench.kb_bench --only sqlite --chunks 2000

1. recall@3 (and @1, MRR) of the questions in bench/data/docs_questions.json against a
   knowledge base of README.md and docs/: a question counts as found when a passage from the
   expected file, under the expected heading, is among the top three;
2. ingestion: Markdown files generated from the docs' own vocabulary (word frequencies kept,
   so queries hit many chunks, as in real documentation) until there are --chunks chunks,
   added with `KnowledgeBase.add`: chunks/s and MB/s;
3. query latency p50/p99 of the questions against that base (docs + generated chunks).

PostgreSQL comes from PARLEY_BENCH_POSTGRES_URL (an admin URL; default
postgresql://postgres@127.0.0.1:5432/postgres): the bench creates parley_bench_<random> and
drops it at the end. A server that does not answer is reported as skipped. The bench reports;
it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bot.knowledge import KnowledgeBase, Passage
from bot.storage import migrate
from bot.storage.database import create_engine

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "bench" / "data" / "docs_questions.json"
SAMPLE = [ROOT / "README.md", ROOT / "docs"]
ADMIN_URL = os.environ.get(
    "PARLEY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SECTIONS_PER_FILE = 50


@dataclass
class Result:
    name: str
    skipped: str = ""
    recall: dict[str, float] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    ingest: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)


def load_questions() -> list[dict[str, str]]:
    questions: list[dict[str, str]] = json.loads(QUESTIONS.read_text())["questions"]
    return questions


def is_hit(passage: Passage, expected: dict[str, str]) -> bool:
    wanted = (ROOT / expected["source"]).resolve().as_posix()
    heading = passage.location.split(" > ")[-1] if passage.location else passage.title
    return passage.source == wanted and heading == expected["heading"]


async def measure_recall(kb: KnowledgeBase, result: Result) -> None:
    questions = load_questions()
    ranks: list[int | None] = []
    for q in questions:
        passages = await kb.search(q["question"], k=3)
        rank = next((n for n, p in enumerate(passages, 1) if is_hit(p, q)), None)
        ranks.append(rank)
        if rank is None:
            got = passages[0].citation if passages else "nothing"
            result.misses.append(f"{q['question']!r}: wanted {q['heading']!r}, got {got!r}")
    found = [r for r in ranks if r is not None]
    result.recall = {
        "questions": len(questions),
        "recall@1": sum(1 for r in found if r == 1) / len(questions),
        "recall@3": len(found) / len(questions),
        "MRR@3": sum(1 / r for r in found) / len(questions),
    }


def docs_vocabulary() -> Counter[str]:
    words: Counter[str] = Counter()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        words.update(re.findall(r"[A-Za-z]{2,}", path.read_text().lower()))
    return words


def write_corpus(folder: Path, chunks: int, seed: int = 7) -> int:
    """Markdown files of SECTIONS_PER_FILE sections, one chunk each (~250 tokens); bytes."""
    rng = random.Random(seed)
    vocab = docs_vocabulary()
    words, weights = list(vocab), list(vocab.values())
    total = 0
    for file_no in range(0, chunks, SECTIONS_PER_FILE):
        parts = [f"# Generated document {file_no // SECTIONS_PER_FILE}\n"]
        for section in range(min(SECTIONS_PER_FILE, chunks - file_no)):
            title = " ".join(rng.choices(words, weights, k=3))
            sentences = [" ".join(rng.choices(words, weights, k=15)) + "." for _ in range(11)]
            parts.append(f"## {section} {title}\n\n" + " ".join(sentences) + "\n")
        text = "\n".join(parts)
        (folder / f"gen_{file_no:06d}.md").write_text(text)
        total += len(text.encode())
    return total


async def measure_ingest_and_latency(
    kb: KnowledgeBase, corpus: Path, size: int, result: Result, repeat: int
) -> None:
    started = time.perf_counter()
    report = await kb.add([corpus])
    elapsed = time.perf_counter() - started
    chunks = sum(f.chunks for f in report.files)
    result.ingest = {
        "files": len(report.files),
        "chunks": chunks,
        "seconds": elapsed,
        "chunks/s": chunks / elapsed,
        "MB/s": size / 1e6 / elapsed,
    }
    timings = []
    questions = [q["question"] for q in load_questions()] * repeat
    for question in questions:
        t0 = time.perf_counter()
        await kb.search(question, k=3)
        timings.append((time.perf_counter() - t0) * 1000)
    timings.sort()
    result.latency_ms = {
        "queries": len(timings),
        "chunks in base": chunks + result.ingest.get("sample chunks", 0),
        "p50": statistics.median(timings),
        "p99": timings[min(len(timings) - 1, int(len(timings) * 0.99))],
    }


async def run_database(name: str, url: str, corpus: Path, size: int, repeat: int) -> Result:
    result = Result(name)
    await migrate.upgrade(url)
    engine = create_engine(url)
    try:
        kb = KnowledgeBase(engine)
        sample = await kb.add(SAMPLE)
        await measure_recall(kb, result)
        await measure_ingest_and_latency(kb, corpus, size, result, repeat)
        result.latency_ms["chunks in base"] += sum(f.chunks for f in sample.files)
    finally:
        await engine.dispose()
    return result


async def run_postgres(corpus: Path, size: int, repeat: int) -> Result:
    try:
        import asyncpg

        admin = await asyncpg.connect(ADMIN_URL, timeout=5)
    except Exception as exc:  # any reason the server cannot be used is a skip
        return Result("PostgreSQL", skipped=f"{type(exc).__name__}: {exc}")
    name = f"parley_bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = ADMIN_URL.rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        return await run_database("PostgreSQL", f"{base}/{name}", corpus, size, repeat)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def print_results(results: list[Result], target: float) -> None:
    for res in results:
        print(f"\n== {res.name} ==")
        if res.skipped:
            print(f"  skipped: {res.skipped}")
            continue
        recall = res.recall["recall@3"]
        verdict = "PASS" if recall >= target else "MISS"
        print(f"  recall@3 {recall:.3f} ({verdict}, target {target})   "
              f"recall@1 {res.recall['recall@1']:.3f}   MRR@3 {res.recall['MRR@3']:.3f}   "
              f"({res.recall['questions']:.0f} questions)")  # fmt: skip
        for miss in res.misses:
            print(f"    miss: {miss}")
        i = res.ingest
        print(f"  ingest   {i['files']:.0f} files, {i['chunks']:.0f} chunks in {i['seconds']:.2f} s"
              f": {i['chunks/s']:.0f} chunks/s, {i['MB/s']:.2f} MB/s")  # fmt: skip
        lat = res.latency_ms
        print(f"  query    p50 {lat['p50']:.2f} ms   p99 {lat['p99']:.2f} ms"
              f"   ({lat['queries']:.0f} queries, {lat['chunks in base']:.0f} chunks)")  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000, help="generated chunks")
    parser.add_argument("--repeat", type=int, default=10, help="passes over the questions")
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        size = write_corpus(corpus, args.chunks)
        results = []
        if args.only != "postgres":
            url = f"sqlite+aiosqlite:///{tmp}/kb.db"
            results.append(await run_database("SQLite", url, corpus, size, args.repeat))
        if args.only != "sqlite":
            results.append(await run_postgres(corpus, size, args.repeat))
    print_results(results, target=0.9)


if __name__ == "__main__":
    asyncio.run(main())
