"""Turn a file's bytes into a titled list of sections: Markdown (by heading), plain text,
HTML (see bot.knowledge.html_loader) and PDF (by page).

Loaders are synchronous and CPU-bound; KnowledgeBase runs them in a worker thread.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from markdown_it import MarkdownIt

from bot.knowledge.html_loader import parse_html
from bot.knowledge.types import MAX_CITED_CHARS, LoadedDocument, Section
from bot.text.decoding import decode_html, decode_text, has_byte_order_mark
from bot.text.encoding import is_binary, mostly_controls, utf16_layout

if TYPE_CHECKING:
    from pypdf import PageObject, PdfReader

LOCATION_SEPARATOR = " > "
# Bytes looked at for the NUL bytes of UTF-16 text without a byte-order mark. Whether a file
# is binary, whatever its name says (an image renamed .md would otherwise be indexed as a
# page of Windows-1252 noise), is bot.text.encoding.is_binary's rule, as in a chat.
BINARY_PROBE_BYTES = 8000
# Characters of text a PDF may yield: 20 per byte of the file (text compresses about 3 to 1,
# and a PDF holds fonts and images besides), and 2 million whatever its size.
PDF_TEXT_PER_BYTE = 20
MIN_PDF_TEXT_CHARS = 2_000_000
# Bytes of page content (the unpacked drawing operators) a PDF may hold, by the same rule: a
# real PDF's pages unpack to about one byte per byte of the file. Checked before a page is
# read, since one page's text is only counted once read: a 270 kB file whose page unpacks to
# 70 MB of text operators was read for over 5 minutes.
PDF_CONTENT_PER_BYTE = 20
MIN_PDF_CONTENT_BYTES = 2_000_000
# Pages a PDF may have: one per 100 bytes of the file (a real page, even compressed, takes
# kilobytes), and 1,000 whatever its size. Each page is read and becomes a passage of its own:
# a page tree listing one small page 20,000 times (6 bytes each) made a 121 kB file 20,000
# chunks, and a 50 MB one would have made millions.
PDF_BYTES_PER_PAGE = 100
MIN_PDF_PAGES = 1_000
# The operator that draws an XObject, after its name: `/Fm0 Do` (not "Do" in a word).
_DRAW_FORM = re.compile(rb"/([^\s/()<>\[\]{}%]*)\s*Do(?![^\s/()<>\[\]{}%])")
# A page's text as the PDF library gives it holds the codes a font maps to no character as
# they are: C0 and C1 controls (a NUL between the bytes of a two-byte code read as two, an
# escape, DEL), none of the page's words, which reached the model and the stored history.
# They are left out, as a NUL is of a text file (bot.text.encoding); a page or line break
# (form feed, vertical tab, NEL) is a line break. Tab, line feed and carriage return stay.
_PAGE_CONTROLS: dict[int, str | None] = {
    code: None for code in (*range(0x00, 0x09), *range(0x0E, 0x20), *range(0x7F, 0xA0))
} | {0x0B: "\n", 0x0C: "\n", 0x85: "\n"}

# The opening of an ATX heading; its closing sequence is taken off in _heading, without a
# regular expression: `(.*?)(?:[ \t]+#+)?[ \t]*$` backtracks over every run of spaces, so a
# heading line with 20,000 spaces took 2 s and one of a megabyte hours.
_ATX_OPEN = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+|$)")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Inline tokens whose content is the text a reader sees in a heading.
_VISIBLE_INLINE = {"text", "code_inline", "image"}
# Characters of a heading's source parsed for its text: room for the markup that shows nothing
# (link targets, emphasis) beside the MAX_CITED_CHARS kept. markdown-it makes tokens of every
# `![` of a line, so a 2 MB heading line of them took a minute and 287 MB, parsed whole.
MAX_HEADING_SOURCE = 4 * MAX_CITED_CHARS
# YAML front matter (Jekyll, Hugo, MkDocs): a first line "---", closed by "---" or "...".
_FRONT_MATTER_OPEN = re.compile(r"^---[ \t]*$")
_FRONT_MATTER_CLOSE = re.compile(r"^(---|\.\.\.)[ \t]*$")
_FRONT_MATTER_TITLE = re.compile(r"^title:(.*)$")


class LoaderError(Exception):
    """The file cannot be read as its type says; the message is the reason shown to the user."""


def _decode(data: bytes, *, html: bool = False) -> str:
    # By the file's real encoding (bot.text.decoding): a UTF-8 file with a stray byte
    # stays UTF-8. UTF-16 without a byte-order mark (Windows' "Unicode" text) is known by
    # its NUL bytes, as in a document sent in a chat (bot.text.encoding). Binary (an image
    # renamed .md) by the chat's rule too (`is_binary`): NUL bytes near the start of a file
    # that is not UTF-8 and more than one byte in 20 a control one. A stray NUL in text is
    # only a character, removed before storing: a Windows-1252 file with one was refused
    # here as binary while the same file sent in a chat was read. Binary is asked first: a
    # byte-order mark its bytes do not bear out, before bytes laid out as UTF-16, was read
    # by the guess below as the noise the mark found (`is_binary` leaves to the guess the
    # other files it reads as UTF-16).
    if is_binary(data):
        raise LoaderError("a binary file, not text")
    probe = data[:BINARY_PROBE_BYTES]
    if b"\x00" in probe and not has_byte_order_mark(data):
        layout = utf16_layout(probe)
        if layout is not None:
            return data.decode(layout, errors="replace")
    text = decode_html(data) if html else decode_text(data)
    if mostly_controls(text):  # control bytes with no NUL among them: no text either
        raise LoaderError("a binary file, not text")
    return text


def load_text(data: bytes, path: Path) -> LoadedDocument:
    return LoadedDocument(path.stem, [Section("", _decode(data))])


def load_html(data: bytes, path: Path) -> LoadedDocument:
    return parse_html(_decode(data, html=True), path.stem)


def load_markdown(data: bytes, path: Path) -> LoadedDocument:
    inline = MarkdownIt("commonmark")
    sections: list[Section] = []
    trail: list[tuple[int, str]] = []  # the open headings: (level, text)
    location = ""  # the trail joined: one string, shared by the sections under it
    body: list[str] = []
    title = ""
    fence = ""

    def close_section() -> None:
        text = "\n".join(body).strip()
        if text:
            sections.append(Section(location, text))
        body.clear()

    def open_heading(level: int, text: str) -> None:
        nonlocal title, location
        close_section()
        while trail and trail[-1][0] >= level:
            trail.pop()
        trail.append((level, text[:MAX_CITED_CHARS]))
        location = LOCATION_SEPARATOR.join(t for _, t in trail)
        title = title or text[:MAX_CITED_CHARS]

    lines = _decode(data).splitlines()
    title, lines = _front_matter(lines)
    for line in lines:
        fence = _track_fence(line, fence)
        heading = None if fence or line.lstrip().startswith(("```", "~~~")) else _heading(line)
        if heading is not None:
            heading = (heading[0], _heading_text(heading[1], inline))
        underline = _SETEXT_UNDERLINE.match(line) if not fence else None
        if heading is not None:
            open_heading(*heading)
        elif underline and body and body[-1].strip() and not _is_list_item(body[-1]):
            text = _heading_text(body.pop(), inline)
            open_heading(1 if underline.group(1)[0] == "=" else 2, text)
        else:
            body.append(line)
    close_section()
    return LoadedDocument(title or path.stem, sections)


def _front_matter(lines: list[str]) -> tuple[str, list[str]]:
    """The document's title from its YAML front matter ("" without one) and the lines after
    it. Without this, the block's closing "---" reads as a setext underline and its last
    field ("tags: [a, b]") becomes the first heading."""
    if not lines or not _FRONT_MATTER_OPEN.match(lines[0]):
        return "", lines
    for end, line in enumerate(lines[1:], start=1):
        if _FRONT_MATTER_CLOSE.match(line):
            fields = (_FRONT_MATTER_TITLE.match(field) for field in lines[1:end])
            title = next((_unquoted(m.group(1)) for m in fields if m is not None), "")
            return title, lines[end + 1 :]
    return "", lines  # never closed: a thematic break, not front matter


def _track_fence(line: str, fence: str) -> str:
    """The open code fence after this line ("" outside one): headings inside are code."""
    match = _FENCE.match(line)
    if match is None:
        return fence
    marker = match.group(1)
    if not fence:
        return marker
    closes = marker[0] == fence[0] and len(marker) >= len(fence) and not line.strip()[len(marker) :]
    return "" if closes else fence


def _unquoted(value: str) -> str:
    """A YAML scalar's text: blanks around it and one pair of matching quotes taken off."""
    value = value.strip(" \t")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value.strip()


def _heading(line: str) -> tuple[int, str] | None:
    match = _ATX_OPEN.match(line)
    if match is None:
        return None
    text = line[match.end() :].rstrip(" \t")
    unclosed = text.rstrip("#")
    if unclosed != text and unclosed[-1:] in (" ", "\t"):  # a closing sequence after text
        text = unclosed.rstrip(" \t")
    return len(match.group(1)), text


def _heading_text(source: str, inline: MarkdownIt) -> str:
    """A heading as a reader sees it, by CommonMark's rules: code spans verbatim
    (`load_only()`, `__init__`), emphasis markers and link targets dropped."""
    # Blanks collapsed first, as in the text shown: a run of them is no markup to cut at.
    tokens = inline.parseInline(" ".join(source.split())[:MAX_HEADING_SOURCE])[0].children or []
    text = "".join(t.content for t in tokens if t.type in _VISIBLE_INLINE)
    return " ".join(text.split())


def _is_list_item(line: str) -> bool:
    return bool(re.match(r"^\s*([-*+]|\d+[.)])\s", line))


def load_pdf(data: bytes, path: Path) -> LoadedDocument:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise LoaderError("PDF support needs the pypdf package") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoaderError("the PDF is encrypted")
        count, most = len(reader.pages), max(MIN_PDF_PAGES, len(data) // PDF_BYTES_PER_PAGE)
        if count > most:
            raise LoaderError(f"the PDF has {count:,} pages, far more than a file of its size has")
        limit = max(MIN_PDF_TEXT_CHARS, PDF_TEXT_PER_BYTE * len(data))
        pages = pdf_pages(reader, limit, pdf_content_limit(len(data)))
        if pages is None:  # pages that share one compressed stream: 25 kB gave 199 million
            raise LoaderError(
                f"the PDF unpacks to over {limit:,} characters of text (or bytes of page "
                "content), far more than a file of its size holds"
            )
        meta_title = reader.metadata.title if reader.metadata else None
    except LoaderError:
        raise
    except Exception as exc:  # pypdf's own errors, and AttributeError, AssertionError... on
        # a malformed file: one bad file is reported, never the end of a folder's ingestion
        raise LoaderError(f"not a readable PDF ({type(exc).__name__})") from None
    sections = [Section(f"page {n}", text) for n, text in enumerate(pages, 1) if text.strip()]
    # A title can be any PDF object, and hold line breaks that would split a citation's line.
    title = " ".join(meta_title.split()) if isinstance(meta_title, str) else ""
    return LoadedDocument(title or path.stem, sections)


def pdf_content_limit(size: int) -> int:
    """The bytes of page content a PDF of `size` bytes may unpack to (see pdf_pages)."""
    return max(MIN_PDF_CONTENT_BYTES, PDF_CONTENT_PER_BYTE * size)


def pdf_pages(reader: PdfReader, limit: int, content_limit: int) -> list[str] | None:
    """Each page's text (control characters left out or line breaks: _PAGE_CONTROLS), read
    page by page; None as soon as they pass `limit` characters in all, or their content
    `content_limit` bytes before the page that would pass it is read (the knowledge base's
    loader and a chat document's reader say so each their way). A
    page's forms (XObjects it draws, read again at each `Do`) count once per `Do` on the
    page: a 5 kB page drawing one 1 MB form 4,900 times was read for over 5 minutes."""
    from pypdf.errors import PyPdfError

    pages: list[str] = []
    total = 0
    content = 0
    for page in reader.pages:
        try:  # unpacked within pypdf's own limits, not yet parsed
            drawn = page.get_contents()
            data = drawn.get_data() if drawn is not None else b""
            images, forms = _form_contents(page, content_limit)
        except PyPdfError:  # a page pypdf cannot unpack: extract_text reads it as empty
            data, images, forms = b"", set(), []
        content += len(data)
        names = (name for d in (data, *forms) for name in _DRAW_FORM.findall(d))
        draws = sum(name not in images for name in names)  # an image is not read for text
        if content > content_limit or draws * max(map(len, forms), default=0) > content_limit:
            return None
        pages.append((page.extract_text() or "").translate(_PAGE_CONTROLS))
        total += len(pages[-1])
        if total > limit:
            return None
    return pages


def _form_contents(page: PageObject, limit: int) -> tuple[set[bytes], list[bytes]]:
    """The names of the images the page may draw (`Im0`), and the unpacked content of each
    form XObject it may draw, forms inside forms included, each once; it stops once they pass
    `limit` bytes in all. A name written otherwise (`/Im#30`) counts as a form's."""
    from pypdf.generic import DictionaryObject, StreamObject

    images: set[bytes] = set()
    found: list[bytes] = []
    size = 0
    seen: set[int] = set()
    pending = [page.get("/Resources")]
    while pending and size <= limit:
        resources = pending.pop()
        resources = resources.get_object() if resources is not None else None
        xobjects = resources.get("/XObject") if isinstance(resources, DictionaryObject) else None
        xobjects = xobjects.get_object() if xobjects is not None else None
        if not isinstance(xobjects, DictionaryObject):
            continue
        for name, value in xobjects.items():
            form = value.get_object()
            if not isinstance(form, StreamObject) or form.get("/Subtype") != "/Form":
                images.add(name[1:].encode("utf-8", "replace"))
            elif id(form) not in seen and size <= limit:
                seen.add(id(form))
                found.append(form.get_data())
                size += len(found[-1])
                pending.append(form.get("/Resources"))
    return images, found


Loader = Callable[[bytes, Path], LoadedDocument]

LOADERS: dict[str, Loader] = {
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".txt": load_text,
    ".text": load_text,
    ".rst": load_text,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
}


def loader_for(path: Path) -> Loader | None:
    return LOADERS.get(path.suffix.lower())


def why_no_text(data: bytes, path: Path) -> str:
    """What a file that `load` took but found nothing to index in holds instead: the reason
    shown to the operator, true to the file's type."""
    if not data:
        return "the file is empty"
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return "no text in the PDF (a scanned one holds only images of its pages)"
    text = decode_text(data)
    if not text.strip():
        return "only blank lines and spaces, no text"
    if LOADERS.get(suffix) is load_markdown:
        if any(line.strip() for line in _front_matter(text.splitlines())[1]):
            return "only headings, no text under them"
        return "only front matter, no text"
    if LOADERS.get(suffix) is load_html:
        return "no text in the page (only markup)"
    return "no text found"


def load(data: bytes, path: Path) -> LoadedDocument:
    loader = loader_for(path)
    if loader is None:
        raise LoaderError(f"unsupported file type {path.suffix or '(no extension)'}")
    return loader(data, path)
