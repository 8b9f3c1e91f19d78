"""HTML to sections with the standard library's parser: headings become locations, script,
style and other non-text elements are dropped, block elements break paragraphs."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from bot.knowledge.types import MAX_CITED_CHARS, LoadedDocument, Section

_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_SKIPPED = {"script", "style", "noscript", "template", "svg", "nav", "iframe"}
# What a <head> may hold; any other start tag ends it, since HTML5 lets </head> (and <body>)
# be left out: without this, such a page's whole body was read as its head and dropped.
# Characters of unparsed markup at the end of a file left to HTMLParser.close() (see finish).
MAX_PARSED_TAIL = 10_000
_HEAD_CONTENT = {"title", "meta", "link", "style", "script", "noscript", "base", "template"}
_BLOCKS = {
    "p", "div", "section", "article", "main", "header", "footer", "aside", "li", "ul", "ol",
    "dl", "dt", "dd", "tr", "table", "blockquote", "pre", "br", "hr", "figure", "figcaption",
}  # fmt: skip
# "<![" before anything but a name: the standard library's parser stops on it with an
# AssertionError ("expected name token"); a browser reads it as a bogus comment. Taken as text.
_NAMELESS_MARKED_SECTION = re.compile(r"<!\[(?![A-Za-z])")


class _SectionParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self._title: list[str] = []  # the <title>'s pieces, joined once (`page_title`)
        self._trail: list[tuple[int, str]] = []
        self._location = ""  # the trail joined: one string, shared by the sections under it
        self._body: list[str] = []
        self._heading: list[str] | None = None  # text of the heading being read
        self._level = 0
        self._skip_depth = 0
        self._in_head = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_head = tag == "head" or (self._in_head and tag in _HEAD_CONTENT)
        if tag in _SKIPPED:
            self._skip_depth += 1
        elif tag == "title":
            self._in_title = not self._skip_depth  # an <svg>'s <title> names an icon
        elif tag in _HEADINGS and not self._skip_depth:
            self._close_section()
            self._heading, self._level = [], _HEADINGS[tag]
        elif tag in _BLOCKS:
            self._body.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag in _SKIPPED:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in _HEADINGS and self._heading is not None:
            self._open_heading(_squash(" ".join(self._heading)))
        elif tag in _BLOCKS:
            self._body.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title.append(data)
        elif self._skip_depth or self._in_head:
            return
        elif self._heading is not None:
            self._heading.append(data)
        else:
            self._body.append(data)

    def finish(self, text: str) -> None:
        """Feed `text` and end the document. What feed() leaves unparsed (an unclosed tag or
        comment at the end) is read by close() in quadratic time before Python 3.11.13
        (CVE-2025-6069: 120 kB of `<a x="` took 40 s); a long such tail is taken as text."""
        self.feed(text)
        line, column = self.getpos()
        start = 0
        for _ in range(line - 1):
            start = text.index("\n", start) + 1
        tail = text[start + column :]
        if len(tail) <= MAX_PARSED_TAIL:
            super().close()
        else:
            self.handle_data(html.unescape(tail))
        if self._heading is not None:  # a heading left open at the end of the file
            self._open_heading(_squash(" ".join(self._heading)))
        self._close_section()

    @property
    def page_title(self) -> str:
        return _squash("".join(self._title))

    def _open_heading(self, text: str) -> None:
        self._heading = None
        while self._trail and self._trail[-1][0] >= self._level:
            self._trail.pop()
        if text:
            self._trail.append((self._level, text[:MAX_CITED_CHARS]))
        self._location = " > ".join(t for _, t in self._trail)

    def _close_section(self) -> None:
        paragraphs = (_squash(p) for p in "".join(self._body).split("\n\n"))
        text = "\n\n".join(p for p in paragraphs if p)
        if text:
            self.sections.append(Section(self._location, text))
        self._body.clear()


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def parse_html(text: str, fallback_title: str) -> LoadedDocument:
    """Title: the <title>, else the first heading, else `fallback_title`."""
    parser = _SectionParser()
    parser.finish(_NAMELESS_MARKED_SECTION.sub("&lt;![", text))
    first_location = parser.sections[0].location if parser.sections else ""
    title = parser.page_title or first_location.split(" > ")[0] or fallback_title
    return LoadedDocument(title, parser.sections)
