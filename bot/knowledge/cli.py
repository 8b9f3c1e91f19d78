"""`parley kb add|list|remove`: the knowledge base from the command line.

Progress goes to stderr (a bar on a terminal, one line per file otherwise, so logs of
scripted runs stay readable); results go to stdout. Where the log is JSON lines
(`log_format = "json"`), each line on stderr is one JSON object with a log line's fields
(bot.logformat), a file's progress too. Exit status 1 when a file failed or nothing matched a
removal.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TextIO

from bot.knowledge.ingest import normalize_source
from bot.knowledge.sample import remove_sample_if_superseded
from bot.knowledge.store import KnowledgeBase
from bot.knowledge.types import (
    DocumentInfo,
    FileResult,
    Outcome,
    check_collection,
    collection_name,
)
from bot.logformat import command_line
from bot.settings import Settings
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.text.terminal import printable

BAR_WIDTH = 30
# C0 and C1 control characters (ESC, BEL, CSI...), tab and newline included.


def add_kb_parser(sub: Any) -> None:
    """Register `kb` on the `parley` command's subparsers."""
    kb = sub.add_parser("kb", help="knowledge base: add, list and remove documents")
    actions = kb.add_subparsers(dest="kb_action", required=True)
    add = actions.add_parser("add", aliases=["ingest"], help="add or update files and folders")
    add.add_argument("paths", nargs="+", metavar="PATH")
    add.add_argument(
        "--collection", default="", help="the collection (a support site's own documents)"
    )
    listing = actions.add_parser("list", help="list the documents and their collections")
    listing.add_argument(
        "--collection", help='only this collection\'s documents ("": the default one)'
    )
    remove = actions.add_parser("remove", help="remove a document, or every one under a folder")
    remove.add_argument("path", metavar="PATH")
    kb.set_defaults(func=cmd_kb)


async def cmd_kb(settings: Settings, args: argparse.Namespace) -> int:
    # Before the database is opened: a collection no column can keep (over 255 characters,
    # which PostgreSQL refuses after the first file) or one with a control character, which
    # SQLite would keep and no site could name, is refused whole, on either database.
    if getattr(args, "collection", None):
        check_collection(args.collection, "--collection")
    say = Stderr(json_format=settings.log_format == "json")
    async with open_knowledge_base(settings) as kb:
        if args.kb_action in ("add", "ingest"):
            return await _add(kb, args.paths, args.collection, say)
        if args.kb_action == "list":
            return await _list(kb, args.collection)
        return await _remove(kb, args.path, say)


class Stderr:
    """The command's own lines on stderr: plain, or one JSON object each where the log is
    JSON lines (a plain line among them broke whatever reads them)."""

    def __init__(self, *, json_format: bool, stream: TextIO | None = None) -> None:
        self.json_format = json_format
        self._stream = stream

    def __call__(self, text: str, level: int = logging.ERROR, *, flush: bool = False) -> None:
        stream = self._stream or sys.stderr  # looked up when used: a test may replace it
        print(command_line(text, json_format=self.json_format, level=level), file=stream,
              flush=flush)  # fmt: skip


@asynccontextmanager
async def open_knowledge_base(settings: Settings) -> AsyncIterator[KnowledgeBase]:
    db = settings.database
    url = db.url.get_secret_value()
    await ensure_schema(url, db.auto_migrate, timeout_s=db.timeout_s)
    engine = create_engine(url, echo=db.echo, pool_size=db.pool_size)
    try:
        yield KnowledgeBase.from_settings(engine, settings.knowledge)
    finally:
        await engine.dispose()


async def _add(kb: KnowledgeBase, paths: list[str], collection: str, say: Stderr) -> int:
    progress = ProgressPrinter(sys.stderr, json_format=say.json_format)
    report = await kb.add(paths, progress=progress, collection=collection)
    for source in report.removed:
        say(printable(f"removed {source}: the file is gone"), logging.INFO)
    stored = [d.source for d in await kb.list(None)] if report.kept else []
    for prefix in report.kept:  # an unmounted share is not a folder whose files all went
        folder = prefix.rstrip("/")
        count = sum(1 for source in stored if source.startswith(prefix))
        documents, are, them = (
            (f"{count} documents", "are", "them") if count != 1 else ("1 document", "is", "it")
        )
        say(printable(f"parley: {folder} holds no file to add now (is it mounted?); the "
                      f"{documents} from it {are} kept (parley kb remove {folder} removes "
                      f"{them})"), logging.WARNING)  # fmt: skip
    if not report.files and not report.removed:  # only folders, none with a file: a typo?
        if report.kept:
            return 1
        names = ", ".join(printable(p) for p in paths)
        say(f"parley: nothing to add: no supported files in {names}")
        return 1
    print(report.summary())
    for moved in report.moved:  # it no longer answers where it was searched before
        print(printable(f"{moved.source}: {moved.move}"))
    if await remove_sample_if_superseded(kb):
        print("removed the sample documents (Parley's own guide): yours replace them")
    return 1 if report.failed or report.kept else 0


async def _list(kb: KnowledgeBase, collection: str | None) -> int:
    documents = await kb.list(collection)
    if not documents and collection is not None:
        print(printable(f"no documents in {collection_name(collection)}"))
        return 0
    if not documents:
        print("the knowledge base is empty: add files with `parley kb add PATH`")
        return 0
    width = max(len("COLLECTION"), *(len(_collection_column(d)) for d in documents))
    size = f"{'SIZE':>{SIZE_WIDTH}}"
    print(f"{'CHUNKS':>6}  {size}  {'UPDATED':16}  {'COLLECTION':{width}}  TITLE  (SOURCE)")
    for doc in documents:
        print(_document_line(doc, width))
    chunks = sum(d.chunks for d in documents)
    print(f"{_count(len(documents), 'document')}, {_count(chunks, 'chunk')}")
    return 0


async def _remove(kb: KnowledgeBase, path: str, say: Stderr) -> int:
    if not path.strip():  # a script's unset variable: "" would name the current folder
        say("parley: kb remove needs a path; an empty one removes nothing")
        return 2
    if normalize_source(path) == "/":  # a script's "$DIR/" with DIR unset: everything
        say("parley: kb remove / would remove every document; name the folder or file they "
            "were added from")  # fmt: skip
        return 2
    removed = await kb.remove(path)
    if not removed:
        say(printable(f"parley: nothing in the knowledge base at or under {path}"))
        return 1
    print(f"removed {removed} document{'s' if removed != 1 else ''}")
    return 0


def _document_line(doc: DocumentInfo, width: int) -> str:
    updated = doc.updated_at.strftime("%Y-%m-%d %H:%M")
    title, source = printable(doc.title), printable(doc.source)
    collection = f"{_collection_column(doc):{width}}"
    size = f"{_size(doc.size):>{SIZE_WIDTH}}"
    return f"{doc.chunks:>6}  {size}  {updated:16}  {collection}  {title}  ({source})"


def _collection_column(doc: DocumentInfo) -> str:
    return printable(doc.collection) if doc.collection else "(default)"


# "999.9 kB": the widest size _size writes.
SIZE_WIDTH = 8


def _size(size: int) -> str:
    """Bytes as at most four digits and a unit: the next unit up once the figure would round
    to 1000 or more ("999.9 kB", then "1.0 MB", not "1000.0 kB")."""
    if size < 1000:
        return f"{size} B"
    figure, unit = size / 1000, "kB"
    for bigger in ("MB", "GB"):
        if round(figure, 1) < 1000:
            break
        figure, unit = figure / 1000, bigger
    return f"{figure:.1f} {unit}"


class ProgressPrinter:
    """The `progress` callback of KnowledgeBase.add for a terminal or a log: JSON lines (no
    bar) where the log is."""

    def __init__(self, stream: TextIO, *, json_format: bool = False) -> None:
        self._stream = stream
        self._say = Stderr(json_format=json_format, stream=stream)
        self._tty = stream.isatty() and not json_format

    def __call__(self, done: int, total: int, result: FileResult) -> None:
        if self._tty:
            self._bar(done, total, result)
        else:
            level = logging.WARNING if result.outcome is Outcome.FAILED else logging.INFO
            self._say(f"[{done}/{total}] {_describe(result)}", level, flush=True)

    def _bar(self, done: int, total: int, result: FileResult) -> None:
        clear = "\r\x1b[K"
        if result.outcome is Outcome.FAILED:  # failures stay on screen above the bar
            print(f"{clear}{_describe(result)}", file=self._stream)
        filled = BAR_WIDTH * done // max(total, 1)
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} "
        room = max(10, shutil.get_terminal_size().columns - len(bar) - 1)
        end = "\n" if done == total else ""
        self._stream.write(f"{clear}{bar}{printable(result.source)[-room:]}{end}")
        self._stream.flush()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _describe(result: FileResult) -> str:
    source = printable(result.source)
    if result.outcome is Outcome.FAILED:
        return f"failed {source}: {printable(result.reason)}"
    chunks = f" ({_count(result.chunks, 'chunk')})" if result.chunks else ""
    move = f", {printable(result.move)}" if result.move else ""
    return f"{result.outcome.value} {source}{chunks}{move}"
