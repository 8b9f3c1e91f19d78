"""The file side of ingestion: which files a list of paths names, and reading, parsing and
chunking one of them. Synchronous; KnowledgeBase runs these in a worker thread."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bot.knowledge.chunker import iter_chunks
from bot.knowledge.loaders import LoaderError, load, loader_for, why_no_text
from bot.knowledge.types import MAX_CITED_CHARS, Chunk, CountTokens
from bot.storage.models import KbDocumentRow
from bot.text.storable import one_line, storable

# The longest path a document can be stored under (kb_documents.source: PostgreSQL refuses a
# longer one, and that error would end the whole run, not only this file's).
MAX_SOURCE_CHARS = KbDocumentRow.source.type.length or 0
# knowledge.max_document_chunks's default.
DEFAULT_MAX_CHUNKS = 100_000


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
    file added as `docs/a.md` and `./docs/../docs/a.md` is one document. `realpath`, not
    `Path.resolve`: a link loop stays a key (Python 3.11's `resolve` raises RuntimeError), and
    reading it fails like any unreadable file."""
    return Path(os.path.realpath(Path(path).expanduser())).as_posix()


@dataclass(frozen=True, slots=True)
class Found:
    """A file to add, and the folder (resolved) whose walk took it; None: named directly."""

    path: Path
    folder: Path | None = None


def collect_files(paths: Iterable[str | Path]) -> list[Found]:
    """Files named directly (whatever their type, so an unsupported one is reported), and the
    supported files under named folders (others there are passed over silently), in order.

    Inside a folder, a symbolic link is taken only when it leads to a file inside that same
    folder that the walk would take itself (not hidden, a supported type; then it is that
    file, stored once): a link out of it would put in the knowledge base a file the operator
    never named, which removing the folder would leave behind. Links to folders are not
    walked. A link named directly is the operator's choice and is followed. `read_file` checks
    a walked file again as it opens it (see `_still_taken`).
    """
    found: dict[str, Found] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            root = path.resolve()
            for file in _walk(path, root):
                found.setdefault(normalize_source(file), Found(file, root))
        else:
            found.setdefault(normalize_source(path), Found(path))
    return list(found.values())


def _walk(folder: Path, root: Path) -> Iterator[Path]:
    files: list[Path] = []
    # A stack, not os.walk: Python 3.11's is recursive, and a folder nested deeper than the
    # recursion limit (about 1,000 levels) ended `parley kb add` in a RecursionError. As with
    # os.walk, links to folders stay shut and a folder that cannot be listed is passed over.
    pending = [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_folder:
                pending.append(entry.path)
            elif loader_for(Path(entry.path)) is not None:
                files.append(Path(entry.path))
    for path in sorted(files):
        if path.is_file() and _inside(path.resolve(), root):
            yield path


def _inside(target: Path, root: Path) -> bool:
    """Whether a file found in the folder `root` (a link's target, for a link) is one the
    walk itself would take: inside the folder, not hidden nor under a hidden folder, of a
    supported type. A committed link `notes.md -> .git/config` put the repository's
    credentials in the knowledge base (a helper's review)."""
    if not target.is_relative_to(root):
        return False
    hidden = any(part.startswith(".") for part in target.relative_to(root).parts)
    return not hidden and loader_for(target) is not None


def _still_taken(path: Path, opened: int, root: Path) -> bool:
    """Whether the file opened (descriptor `opened`) from `path` is one the walk of `root`
    takes. The walk looks at every file before the first is read, minutes before the last
    one on a big folder: a file replaced meanwhile by a link out of the folder (by anyone who
    may write in it) was read, and the file it leads to (`~/.aws/credentials`) answered
    questions. What `path` leads to now must be inside, and be the file opened."""
    target = Path(os.path.realpath(path))
    if not _inside(target, root):
        return False
    try:
        now = os.stat(target)
    except OSError:
        return False
    was = os.fstat(opened)
    return (now.st_dev, now.st_ino) == (was.st_dev, was.st_ino)


class Unreachable(LoaderError):
    """The path leads to no file (a typo, a link to a missing file, a link loop): it is
    reported under the path given, since there is no file to name."""


def given_source(path: str | Path) -> str:
    """The path as the operator gave it, made absolute (links not resolved)."""
    return Path(os.path.abspath(Path(path).expanduser())).as_posix()


def read_file(path: Path, max_bytes: int, folder: Path | None = None) -> FileData:
    """The file's bytes; `folder`: the (resolved) folder whose walk took it (Found.folder)."""
    try:  # first: a typo or a link loop, not a file type to complain about
        info = path.stat()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOENT and path.is_symlink():
            reason += f" (a link to a missing file: {os.path.realpath(path)})"
        raise Unreachable(reason) from None
    if loader_for(path) is None:
        raise LoaderError(f"unsupported file type {path.suffix or '(no extension)'}")
    source = normalize_source(path)
    if storable(source) != source:  # bytes Python keeps as lone surrogates: no database takes them
        raise LoaderError("the file's path is not valid UTF-8; rename it")
    if len(source) > MAX_SOURCE_CHARS:
        raise LoaderError(
            f"the file's path is {len(source)} characters long, over the {MAX_SOURCE_CHARS} "
            "the knowledge base keeps; move or rename it"
        )
    if not stat.S_ISREG(info.st_mode):  # reading a FIFO or /dev/zero would never end
        raise LoaderError("not a regular file")
    too_big = LoaderError(f"larger than the {max_bytes // 1_000_000} MB limit")
    if info.st_size > max_bytes:
        raise too_big
    try:
        # Without waiting (O_NONBLOCK), and checked again once open: a file replaced by a
        # FIFO since its stat above (by anyone who may write in the folder) would otherwise
        # be opened by its name and wait for a writer for ever.
        opened = os.open(
            path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        )
        with open(opened, "rb") as file:
            if not stat.S_ISREG(os.fstat(opened).st_mode):
                raise LoaderError("not a regular file")
            if folder is not None and not _still_taken(path, file.fileno(), folder):
                raise LoaderError("replaced since the folder was walked (a link out of it?)")
            data = file.read(max_bytes + 1)  # a file still growing stops at the limit too
    except OSError as exc:
        raise _unreadable(exc) from None
    if len(data) > max_bytes:
        raise too_big
    return FileData(source, data, hashlib.sha256(data).hexdigest())


def _unreadable(exc: OSError) -> LoaderError:
    return LoaderError(exc.strerror or type(exc).__name__)


def parse_file(
    path: Path, data: bytes, count: CountTokens, max_chunks: int = DEFAULT_MAX_CHUNKS
) -> Parsed:
    """The document's title and chunks; a LoaderError past `max_chunks` chunks, before the
    rest are made (knowledge.max_document_chunks)."""
    document = load(data, path)
    chunks: list[Chunk] = []
    for chunk in iter_chunks(document.sections, count):
        if len(chunks) == max_chunks:
            raise LoaderError(
                f"makes more than {max_chunks:,} passages (knowledge.max_document_chunks); "
                "split it, or raise the limit"
            )
        chunks.append(_storable(chunk))
    if not chunks:
        raise LoaderError(why_no_text(data, path))
    return Parsed(storable(one_line(document.title)[:MAX_CITED_CHARS]), chunks)


def _storable(chunk: Chunk) -> Chunk:
    """The chunk with NUL and lone surrogates replaced (PostgreSQL refuses the first, no
    driver can encode the second, and either would fail the whole file's write), and its
    location cut like the title: it is stored with every chunk and cited in every answer."""
    # One line: a break in a title or location would let it write a line of the sources list.
    location = storable(one_line(chunk.location)[:MAX_CITED_CHARS])
    return Chunk(location, storable(chunk.text), chunk.token_count)
