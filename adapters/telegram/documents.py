"""Reading a document sent to the bot: plain text, Markdown, HTML or PDF, up to a size limit.

The text becomes the user's message, after the caption (a command such as `/translate de`
or a request in words); without a caption the bot is asked for a summary.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import PurePosixPath

from telegram import Bot

from .formatting import to_text
from .translate import Fetch

_KINDS = {
    "text/plain": "text",
    "text/markdown": "text",
    "text/x-markdown": "text",
    "text/html": "html",
    "application/pdf": "pdf",
}
_SUFFIXES = {".txt": "text", ".md": "text", ".markdown": "text", ".html": "html", ".htm": "html"}
_SUFFIXES[".pdf"] = "pdf"
_SCRIPTS = re.compile(r"(?is)<(script|style)\b.*?</\1>")
CANNOT_READ = "I can read plain text, Markdown, HTML and PDF documents, but not this one."


class Unreadable(Exception):
    """The document cannot be read; the message is for the user."""


async def read_document(bot: Bot, fetch: Fetch, max_bytes: int) -> str:
    kind = _kind(fetch)
    if kind is None:
        raise Unreadable(CANNOT_READ)
    too_big = f"That document is too large for me: I read documents up to {max_bytes // 1000} kB."
    if fetch.size > max_bytes:
        raise Unreadable(too_big)
    file = await bot.get_file(fetch.file_id)
    data = bytes(await file.download_as_bytearray())
    if len(data) > max_bytes:
        raise Unreadable(too_big)
    text = await _extract(kind, data)
    if not text.strip():
        raise Unreadable("I found no text in that document.")
    return text.strip()


def request_text(fetch: Fetch, content: str) -> str:
    asked = fetch.incoming.text.strip()
    if not asked:
        asked = f"Please summarize this document ({fetch.file_name})."
    return f"{asked}\n\n{content}"


def _kind(fetch: Fetch) -> str | None:
    mime = fetch.mime_type.split(";")[0].strip().lower()
    return _KINDS.get(mime) or _SUFFIXES.get(PurePosixPath(fetch.file_name).suffix.lower())


async def _extract(kind: str, data: bytes) -> str:
    if kind == "pdf":
        return await asyncio.to_thread(_pdf_text, data)  # parsing is CPU work
    text = data.decode("utf-8", errors="replace")
    return to_text(_SCRIPTS.sub("", text)) if kind == "html" else text


def _pdf_text(data: bytes) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise Unreadable("I can't read PDF documents on this server.") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError) as exc:
        raise Unreadable("That PDF looks damaged; I could not read it.") from exc
