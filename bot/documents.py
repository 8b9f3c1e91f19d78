"""Reading a document a user sent: plain text, Markdown, HTML or PDF, within caps.

Every adapter hands the core the document's name, type, size and a way to download it; the
core decides. The size cap is checked before the download, and the text is extracted in a
child process of its own with caps on pages, characters, seconds and memory: a hostile PDF
(pages that share one huge compressed stream, a decompression bomb) costs that process, never
the event loop; it is killed when its time is up, and its allocations fail past
`max_memory_mb` (Linux) before the host runs out of memory and the kernel ends a process of
its choice, perhaps the bot's. At most `max_parallel` documents are read at once, and at most
one of each sender: a sender's next document waits for their previous one, so one sender's
slow (or hostile) documents never hold every slot while others wait. A document is downloaded
in its sender's turn too, within `download_timeout_s`, and at most twice `max_parallel` are
downloaded or held at once: memory for documents is bounded by that many times `max_bytes`
(and `max_parallel` times `max_memory_mb` for reading them), however many senders send at
once.

    DocumentRefused   the document cannot be read as sent; `sentence` says why, for the user
      DocumentRefusedForNow   not read this time, for a reason that says nothing of the file
                              (a failed download, a read too slow, a reader the kernel killed)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import multiprocessing
import os
import signal
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from bot import phrases
from bot.text.encoding import decode_document, is_binary, mostly_controls

if TYPE_CHECKING:  # not at run time: the reading child would import pydantic and SQLAlchemy
    from bot.settings import DocumentSettings

log = logging.getLogger(__name__)

KINDS = {
    "text/plain": "text",
    "text/markdown": "text",
    "text/x-markdown": "text",
    "text/html": "html",
    "application/pdf": "pdf",
}
SUFFIXES = {".txt": "text", ".md": "text", ".markdown": "text", ".rst": "text"}
SUFFIXES |= {".html": "html", ".htm": "html", ".pdf": "pdf"}

# The child's exit status when reading passed its memory cap (a Python process ending on its
# own exits 0, or 1 on an exception).
_OUT_OF_MEMORY = 3
# How long a child that closed its end of the pipe gets to exit (one past its memory cap
# exits at once, and one the kernel killed is gone) before it is taken for damaged.
CHILD_EXIT_S = 5.0
# Ended by SIGKILL though the parent never killed it: the kernel's OOM killer (a container's
# limit below max_memory_mb). Windows has no signal of that name, and no such end.
_KILLED = -getattr(signal, "SIGKILL", 9)


@dataclass(frozen=True, slots=True)
class DocumentSource:
    """A document as a platform announces it; `download` fetches its bytes."""

    name: str
    mime_type: str
    size: int
    download: Callable[[], Awaitable[bytes]]


@dataclass(slots=True)
class _Turn:
    """One sender's turn at the slots, and how many of their documents hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    documents: int = 0


class DocumentRefused(Exception):
    """`sentence` (a phrases key) and its fields say why, in the user's language."""

    # Whether the refusal says nothing of the file: DocumentRefusedForNow.
    for_the_moment: ClassVar[bool] = False

    def __init__(self, sentence: str, **fields: object) -> None:
        super().__init__(sentence.format(**fields) if fields else sentence)
        self.sentence = sentence
        self.fields = fields


class DocumentRefusedForNow(DocumentRefused):
    """A refusal that says nothing of the file (a download that failed, a read too slow on a
    busy machine, a reader the kernel killed): the same file may be read later."""

    for_the_moment = True


def kind_of(name: str, mime_type: str) -> str | None:
    mime = mime_type.split(";")[0].strip().lower()
    return KINDS.get(mime) or SUFFIXES.get(PurePosixPath(name).suffix.lower())


class DocumentReader:
    def __init__(self, settings: DocumentSettings) -> None:
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.max_parallel)
        # Documents downloaded or held (downloading, waiting for a slot, or being read).
        self._in_hand = asyncio.Semaphore(2 * settings.max_parallel)
        self._senders: dict[str, _Turn] = {}  # senders with a document read or waiting

    @property
    def settings(self) -> DocumentSettings:
        return self._settings

    def check(self, source: DocumentSource) -> str:
        """The document's kind, or DocumentRefused before anything is downloaded."""
        kind = kind_of(source.name, source.mime_type)
        if kind is None:
            raise DocumentRefused(phrases.DOC_UNSUPPORTED)
        if source.size > self._settings.max_bytes:
            raise DocumentRefused(phrases.DOC_TOO_LARGE, kb=self._settings.max_bytes // 1000)
        return kind

    async def read(self, source: DocumentSource, sender: str | None = None) -> str:
        """The document's text. A `sender` (intake's sender key) has one document read at a
        time; None: the document takes a slot as soon as one is free."""
        kind = self.check(source)
        async with self._turn_of(sender), self._in_hand:
            data = await self._download(source)
            async with self._slots:
                text = await _isolated(kind, data, self._settings)
        if not text.strip():
            raise DocumentRefused(phrases.DOC_EMPTY)
        return text.strip()

    async def _download(self, source: DocumentSource) -> bytes:
        try:
            async with asyncio.timeout(self._settings.download_timeout_s):
                data = await source.download()
        except Exception as exc:  # the platform's own errors: one sentence, the reason logged
            why = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.warning("document download failed: %s", why)
            raise DocumentRefusedForNow(phrases.NO_DOWNLOAD) from None
        if len(data) > self._settings.max_bytes:
            raise DocumentRefused(phrases.DOC_TOO_LARGE, kb=self._settings.max_bytes // 1000)
        return data

    @contextlib.asynccontextmanager
    async def _turn_of(self, sender: str | None) -> AsyncIterator[None]:
        if sender is None:
            yield
            return
        turn = self._senders.setdefault(sender, _Turn())
        turn.documents += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.documents -= 1
            if turn.documents == 0:  # none of theirs is read or waits: forget the sender
                del self._senders[sender]


async def _isolated(kind: str, data: bytes, s: DocumentSettings) -> str:
    """extract() in a child process, killed after `timeout_s`."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    caps = (s.max_pages, s.max_chars, s.max_memory_mb)
    child = context.Process(target=read_in_child, args=(sender, kind, data, *caps), daemon=True)
    child.start()
    sender.close()
    try:
        ready = await asyncio.to_thread(receiver.poll, s.timeout_s)
        if not ready:
            raise DocumentRefusedForNow(phrases.DOC_TOO_SLOW)
        try:
            outcome: tuple[str, str, dict[str, int]] = receiver.recv()
        except EOFError:  # the child died: out of memory, or a crash in a parser
            # Bounded: a child that closed its end but does not exit must not hold the slot
            # (still running: "damaged", and it is killed below).
            await asyncio.to_thread(child.join, CHILD_EXIT_S)
            if child.exitcode == _OUT_OF_MEMORY:
                log.warning("document refused: over documents.max_memory_mb (%d)", s.max_memory_mb)
                raise DocumentRefused(phrases.DOC_TOO_MUCH_MEMORY) from None
            if child.exitcode == _KILLED:
                # Not its own cap: the kernel chose it while the host (or its container) was
                # short of memory, perhaps for others' allocations. It tells nothing of the
                # file: the user is asked to send it again, an edit keeps the text read when
                # it was sent.
                log.warning("document refused: its reader was killed, out of the host's memory%s",
                            _below_the_limit(s.max_memory_mb))  # fmt: skip
                raise DocumentRefusedForNow(phrases.DOC_NOT_NOW) from None
            raise DocumentRefused(phrases.DOC_DAMAGED) from None
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        await asyncio.to_thread(child.join)
    status, text, fields = outcome
    if status != "ok":
        raise DocumentRefused(status, **fields)
    return text


def _below_the_limit(max_memory_mb: int) -> str:
    """What the kill's log line adds where documents.max_memory_mb is not below the process's
    memory limit: the same file will be killed every time (`parley doctor` says so too)."""
    limit = memory_limit()
    if limit is None or not cap_over_limit(max_memory_mb, limit):
        return ""
    return (f" (documents.max_memory_mb, {max_memory_mb}, is not below this process's memory "
            f"limit, {limit // 2**20} MB: lower it)")  # fmt: skip


def cap_over_limit(max_memory_mb: int, limit: int) -> bool:
    """Whether a reader's cap (`documents.max_memory_mb`) is not below the process's memory
    limit (bytes, memory_limit()): the kernel then ends a reader before the cap can refuse."""
    return max_memory_mb * 2**20 >= limit


def read_in_child(
    sender: Connection, kind: str, data: bytes, max_pages: int, max_chars: int, max_mb: int
) -> None:
    """The reading child process's entry: extract() under the memory cap, its outcome sent
    through `sender` (spawned by reference, so a test can give the process another)."""
    first_to_go()
    _cap_address_space(max_mb)
    # A spawned process has no logging set up: without a handler, logging's last resort
    # wrote each of pypdf's warnings about a damaged file (thousands for one hostile PDF,
    # quoting its names) to the bot's stderr, beside its log lines. What went wrong is the
    # one sentence sent back; the parent shows the library's own lines with --verbose only.
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.simplefilter("ignore")
    try:
        sender.send(("ok", extract(kind, data, max_pages, max_chars), {}))
    except DocumentRefused as exc:
        sender.send((exc.sentence, "", {k: int(str(v)) for k, v in exc.fields.items()}))
    except MemoryError:  # past the cap: no allocation to say so, the exit status says it
        os._exit(_OUT_OF_MEMORY)
    except Exception:  # a parser bug on hostile input: the user hears "damaged"
        sender.send((phrases.DOC_DAMAGED, "", {}))
    finally:
        sender.close()


def first_to_go() -> None:
    """Make this process the one the kernel's OOM killer ends first (Linux: the highest
    `oom_score_adj`, which any process may set for itself). The memory cap bounds what a
    reader maps, but a host or container short of memory for other reasons (several readers
    at once, a container limit below max_memory_mb) has the kernel end a process of its
    choice, chosen mostly by size: the worker, which holds every conversation in flight, is
    larger than a reader. With this the reader goes, and its user is asked to send the
    document again. Elsewhere (no /proc) nothing changes."""
    with (
        contextlib.suppress(OSError),
        open("/proc/self/oom_score_adj", "w", encoding="ascii") as adjust,
    ):
        adjust.write("1000")


# cgroup v1 writes "no limit" as the largest multiple of the page size below 2**63.
_NO_LIMIT_V1 = 2**62


def memory_limit(
    root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The memory this process's cgroup may use, in bytes: the lowest limit over its cgroup
    and the cgroups above it (a container's, a systemd unit's `MemoryMax`), cgroup v2 or v1;
    None where none is set or none can be read (not Linux, no cgroup file system)."""
    try:
        lines = own.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        parts = line.split(":", 2)  # hierarchy-id:controllers:path
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one hierarchy
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = PurePosixPath(path)
        for level in (folder, *folder.parents):
            try:
                value = (base / str(level).lstrip("/") / name).read_text(encoding="ascii").strip()
            except OSError:
                continue
            if value.isdigit() and int(value) < _NO_LIMIT_V1:  # v2 says "max" for none
                limits.append(int(value))
    return min(limits, default=None)


def _cap_address_space(max_mb: int) -> None:
    """Let this process map at most `max_mb` MB more than it maps now (the interpreter, the
    modules its entry imports, and the document's bytes): past it an allocation fails
    (MemoryError). Linux only: elsewhere there is no /proc to read what is mapped now (macOS
    counts a shared region of gigabytes in every process's size) or no `resource` module
    (Windows)."""
    try:
        import resource

        with open("/proc/self/statm", encoding="ascii") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + max_mb * 2**20
    for limit in (soft, hard):
        if limit != resource.RLIM_INFINITY:
            cap = min(cap, limit)  # a lower limit set for the whole bot stays
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def extract(kind: str, data: bytes, max_pages: int, max_chars: int) -> str:
    """The document's text (synchronous, CPU-bound: run it through DocumentReader)."""
    if kind == "pdf":
        text = _pdf_text(data, max_pages, max_chars)
    elif is_binary(data):  # an archive or an image named notes.txt: not read as noise
        raise DocumentRefused(phrases.DOC_UNSUPPORTED)
    elif kind == "html":
        from bot.knowledge.html_loader import parse_html

        loaded = parse_html(decode_document(data, html=True), "document")
        text = "\n\n".join(section.text for section in loaded.sections)
    else:
        text = decode_document(data)
    if kind != "pdf" and mostly_controls(text):  # control bytes without a NUL among them
        raise DocumentRefused(phrases.DOC_UNSUPPORTED)
    if len(text) > max_chars:
        raise DocumentRefused(phrases.DOC_TOO_LONG, chars=max_chars)
    return text


def _pdf_text(data: bytes, max_pages: int, max_chars: int) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    from bot.knowledge.loaders import pdf_content_limit, pdf_pages

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentRefused(phrases.DOC_DAMAGED)
        if len(reader.pages) > max_pages:
            raise DocumentRefused(phrases.DOC_TOO_MANY_PAGES, pages=max_pages)
        pages = pdf_pages(reader, max_chars, pdf_content_limit(len(data)))
        if pages is None:
            raise DocumentRefused(phrases.DOC_TOO_LONG, chars=max_chars)
    except (DocumentRefused, MemoryError):  # a MemoryError: past the child's cap
        raise
    except (PyPdfError, Exception):  # hostile bytes meet every kind of parser error
        raise DocumentRefused(phrases.DOC_DAMAGED) from None
    return "\n\n".join(pages)
