"""The file side of ingestion: which files a list of paths names, and reading, parsing and
chunking one of them. Synchronous; KnowledgeBase runs these in a worker thread."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.knowledge.chunker import chunk_sections
from bot.knowledge.loaders import LoaderError, load, loader_for
from bot.knowledge.types import Chunk, CountTokens


@dataclass(frozen=True, slots=True)
class FileData:
    source: str
    data: bytes
    sha256: str


@dataclass(frozen=True, slots=True)
class Parsed:
    title: str
    chunks: list[Chunk]


def normalize_source(path: str | Path) -> str:
    """The key a document is stored under: its absolute path with links resolved, so the same
    file added as `docs/a.md` and `./docs/../docs/a.md` is one document."""
    return Path(path).expanduser().resolve().as_posix()


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly (whatever their type, so an unsupported one is reported), and the
    supported files under named folders (others there are passed over silently), in order.

    Inside a folder, a symbolic link is taken only when it leads to a file inside that same
    folder (then it is that file, stored once): a link out of it would put in the knowledge
    base a file the operator never named, which removing the folder would leave behind. Links
    to folders are not walked. A link named directly is the operator's choice and is followed.
    """
    found: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        for file in _walk(path) if path.is_dir() else [path]:
            found.setdefault(normalize_source(file), file)
    return list(found.values())


def _walk(folder: Path) -> Iterator[Path]:
    root = folder.resolve()
    files: list[Path] = []
    for current, dirs, names in os.walk(folder):  # followlinks=False: linked folders stay shut
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(current, name)
            if not name.startswith(".") and loader_for(path) is not None:
                files.append(path)
    for path in sorted(files):
        if path.is_file() and path.resolve().is_relative_to(root):
            yield path


def read_file(path: Path, max_bytes: int) -> FileData:
    if loader_for(path) is None:
        raise LoaderError(f"unsupported file type {path.suffix or '(no extension)'}")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise LoaderError(f"larger than the {max_bytes // 1_000_000} MB limit")
        data = path.read_bytes()
    except OSError as exc:
        raise LoaderError(exc.strerror or type(exc).__name__) from None
    return FileData(normalize_source(path), data, hashlib.sha256(data).hexdigest())


def parse_file(path: Path, data: bytes, count: CountTokens) -> Parsed:
    document = load(data, path)
    chunks = chunk_sections(document.sections, count)
    if not chunks:
        raise LoaderError("no text found (a scanned PDF or an empty file?)")
    return Parsed(document.title[:500], chunks)
