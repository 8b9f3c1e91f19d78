"""The model's Markdown as Telegram HTML.

The Markdown is parsed by markdown-it-py (CommonMark, plus tables and ~~strikethrough~~) and
its tokens are written as the HTML Telegram knows: b, i, s, code, pre (with its language
class), a (http and https links only) and blockquote. Headings are bold, list items start
with "• " or "1. ", tables become a <pre> block of aligned rows, and everything else,
raw HTML included, is escaped text. Tags are written in pairs from the parser's paired
tokens, so the output always nests; Telegram's own nesting rules are kept too (nothing
inside code, no link inside a link, no quote inside a quote). One rule differs from
CommonMark: `__name__` (a Python name, `__init__.py`) stays as typed instead of a bold "name".
Outside code, "@name" is written with a fullwidth at sign: Telegram would make it a mention
that notifies a member of the group.

Length: what a reader sees of `to_html(md)` is never longer than `md` (in characters and in
UTF-16 units), so a splitter that cuts the Markdown within Telegram's limit is enough. The
rendering only drops markup, writes one character for one ("- " -> "• ") and keeps at most
the blank lines of the source between blocks; where a rare input would break the rule (tab
stops expanded inside a list's code block, a padded table), the table falls back to plain
rows and the whole piece to escaped Markdown. `to_html` checks it on every call.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

# html=False: raw HTML from the model is text, never markup.
_PARSER = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
_TAG = re.compile(r"<[^>]+>")
_LANGUAGE = re.compile(r"[\w+#.-]+")
_DUNDER = re.compile(r"\w+")
_STYLE = {"strong": "b", "em": "i", "s": "s"}
_LEAVES = {"paragraph_open", "heading_open", "fence", "code_block", "hr", "table_open"}
RULE = "———"  # a thematic break is at least three characters of Markdown
# Telegram makes "@username" in a message's text a mention that notifies that member of the
# group (outside code only, HTML or plain text alike). A fullwidth at sign reads the same,
# has the same length and mentions no one: model output never pings anyone.
# Only a word character before it keeps an at sign from starting a mention (tdlib's rule,
# which the Bot API server runs): in "@@alice" the second one mentions (a helper's review).
_MENTION = re.compile(r"(?<!\w)@(?=[A-Za-z0-9_])")
_QUIET_AT = "\uff20"
# Telegram finds mentions in the message's whole text, across bold, italic and strikethrough
# (tdlib keeps a found mention unless it overlaps code, pre or a text link): an at sign that
# ends one piece of text, and a name that starts the next ("@*alice*", "@__alice__", a link
# shown as its text alone), is a mention too. The rendered HTML, read once more as Telegram
# reads it: its tags (the only "<" in it: text is escaped), its entities, and its text.
_HTML_PIECE = re.compile(r"<(/?)([a-z]+)[^>]*>|&(?:amp|lt|gt);|[^<&]+|&")
_NO_MENTIONS_IN = frozenset({"code", "pre", "a"})


def to_html(markdown: str) -> str:
    """Telegram-safe HTML for one message's worth of Markdown (see the module's length rule)."""
    rendered = _Renderer(markdown).render()
    if _longer(to_text(rendered), markdown):
        return _text(markdown)
    return _quiet_across_tags(rendered)


def quiet_mentions(text: str) -> str:
    """`text` with no "@username" that Telegram would turn into a mention."""
    return _MENTION.sub(_QUIET_AT, text)


def _quiet_across_tags(telegram_html: str) -> str:
    """`telegram_html` with every at sign outside code and links that starts a mention in
    the text Telegram reads from it (tags dropped) written fullwidth."""
    shown: list[str] = []  # the text as Telegram reads it, one character at a time
    at: list[int] = []  # where each character is in the HTML; -1: in code, pre or a link
    inside = 0
    for piece in _HTML_PIECE.finditer(telegram_html):
        closing, tag = piece.group(1), piece.group(2)
        if tag is not None:
            if tag in _NO_MENTIONS_IN:
                inside += -1 if closing else 1
            continue
        text = piece.group()
        start = piece.start()
        chars = html.unescape(text)
        shown += chars
        at += [-1 if inside else start + i for i in range(len(chars))]
    out = list(telegram_html)
    for found in _MENTION.finditer("".join(shown)):
        if at[found.start()] >= 0:
            out[at[found.start()]] = _QUIET_AT
    return "".join(out)


def _text(text: str) -> str:
    """Text outside code, as Telegram HTML: escaped, and mentioning no one."""
    return quiet_mentions(html.escape(text, quote=False))


def to_text(telegram_html: str) -> str:
    """What a reader sees of Telegram HTML (tags dropped, entities decoded)."""
    return html.unescape(_TAG.sub("", telegram_html))


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _longer(visible: str, markdown: str) -> bool:
    return len(visible) > len(markdown) or utf16_len(visible) > utf16_len(markdown)


class _Renderer:
    """Walks the block tokens once; `_newlines` keeps no more line breaks than the source."""

    def __init__(self, markdown: str) -> None:
        self._markdown = markdown
        self._lines = markdown.split("\n")
        self._out: list[str] = []
        self._lists: list[list[int]] = []  # per open list: [next number, or -1 for bullets]
        self._quoted = 0
        self._last_line: int | None = None  # where the previous leaf block ended
        self._fresh = False  # a bullet was just written: its first block follows on its line
        self._handlers: dict[str, Callable[[Token], None]] = {
            "bullet_list_open": self._open_list,
            "ordered_list_open": self._open_list,
            "bullet_list_close": self._close_list,
            "ordered_list_close": self._close_list,
            "list_item_open": self._bullet,
            "blockquote_open": self._open_quote,
            "blockquote_close": self._close_quote,
            "fence": self._code,
            "code_block": self._code,
            "hr": self._rule,
        }

    def render(self) -> str:
        tokens = _PARSER.parse(self._markdown)
        i = 0
        while i < len(tokens):
            i = self._block(tokens, i)
        return "".join(self._out).rstrip()

    def _block(self, tokens: Sequence[Token], i: int) -> int:
        """Writes the block at tokens[i]; returns the index of the next one."""
        token = tokens[i]
        if token.type in _LEAVES:
            self._separate(token)
        if token.type in ("heading_open", "paragraph_open"):
            text = _inline(tokens[i + 1])
            heading = token.type == "heading_open" and text
            self._out.append(f"<b>{text}</b>" if heading else text)
            return i + 3  # open, inline, close
        if token.type == "table_open":
            return self._table(tokens, i)
        handler = self._handlers.get(token.type)
        if handler is not None:
            handler(token)
        return i + 1

    def _separate(self, token: Token) -> None:
        start, end = token.map or (0, 0)
        if self._fresh:
            self._fresh = False
        else:
            self._newlines(start)
        self._last_line = end

    def _newlines(self, start: int) -> None:
        """One line break, or two where the source had a blank line; nested items indented
        two spaces a level (the source needs at least that much to nest)."""
        if self._last_line is None:
            return
        self._out.append("\n" * min(2, max(1, start - self._last_line + 1)))
        if len(self._lists) > 1:
            self._out.append("  " * (len(self._lists) - 1))

    def _open_list(self, token: Token) -> None:
        ordered = token.type == "ordered_list_open"
        self._lists.append([int(token.attrs.get("start", 1)) if ordered else -1])

    def _close_list(self, token: Token) -> None:
        self._lists.pop()

    def _bullet(self, token: Token) -> None:
        start = (token.map or (0, 0))[0]
        if not self._fresh:
            self._newlines(start)
        counter = self._lists[-1]
        if counter[0] < 0:
            self._out.append("• ")
        else:
            number = str(counter[0])
            # A number longer than the one written ("9. a / 1. b" -> 10.) would outgrow
            # the Markdown, so the written one is shown then.
            self._out.append(f"{number if len(number) <= len(token.info) else token.info}. ")
            counter[0] += 1
        self._fresh = True
        self._last_line = start

    def _open_quote(self, token: Token) -> None:
        # Telegram's quotes do not nest: an inner quote continues the outer one.
        if self._quoted == 0:
            self._separate(token)
            self._fresh = True
            self._out.append("<blockquote>")
        self._quoted += 1

    def _close_quote(self, token: Token) -> None:
        self._quoted -= 1
        if self._quoted == 0:
            self._fresh = False
            self._close_trimmed("</blockquote>")

    def _rule(self, token: Token) -> None:
        self._out.append(RULE)

    def _close_trimmed(self, tag: str) -> None:
        """Closes a tag after its text; an empty quote is dropped rather than sent empty."""
        opening = "<" + tag[2:]
        if self._out and self._out[-1] == opening:
            self._out.pop()
        else:
            self._out.append(tag)

    def _code(self, token: Token) -> None:
        code = token.content.rstrip("\n")
        if not code:
            # "``` See you." with nothing after it: an empty block whose "language" is words
            # the writer meant as text (a model that put a fence mid-line); they stay.
            info = token.info.strip()
            if info and _LANGUAGE.fullmatch(info) is None:  # "```python" alone is markup
                self._out.append(_text(info))
            return
        if self._quoted:  # a quote cannot hold a code block in Telegram: its text stays
            self._out.append(_text(code))
            return
        match = _LANGUAGE.match(token.info.strip())
        attr = f' class="language-{match.group(0)}"' if match else ""
        self._out.append(f"<pre><code{attr}>{html.escape(code, quote=False)}</code></pre>")

    def _table(self, tokens: Sequence[Token], i: int) -> int:
        start, end = tokens[i].map or (0, 0)
        rows: list[list[str]] = []
        while tokens[i].type != "table_close":
            token = tokens[i]
            if token.type == "tr_open":
                rows.append([])
            elif token.type == "inline":
                rows[-1].append(to_text(_inline(token)))
            i += 1
        source = "\n".join(self._lines[start:end])
        self._out.append(_table_text(rows, source, quoted=self._quoted > 0))
        return i + 1


def _table_text(rows: list[list[str]], source: str, *, quoted: bool) -> str:
    """Aligned rows in <pre> when they fit in the table's own Markdown, else plain rows."""
    widths = [max(len(row[c]) for row in rows if c < len(row)) for c in range(len(rows[0]))]
    padded = "\n".join(
        " | ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip() for row in rows
    )
    if not quoted and not _longer(padded, source):
        return f"<pre>{html.escape(padded, quote=False)}</pre>"
    plain = "\n".join(" | ".join(row) for row in rows)
    return _text(plain if not _longer(plain, source) else source)


def _inline(token: Token) -> str:
    """One block's inline Markdown as Telegram HTML."""
    out: list[str] = []
    closers: list[str] = []  # what each open token's close writes: a tag, literal markup or ""
    in_link = 0
    children = token.children or []
    for i, child in enumerate(children):
        kind = child.type
        if kind == "text":
            out.append(_text(child.content))
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "code_inline":
            code = html.escape(child.content, quote=False)
            out.append(code if in_link else f"<code>{code}</code>")
        elif kind.endswith("_open") and kind[:-5] in _STYLE:
            closers.append(_style_open(children, i, out))
        elif kind == "link_open":
            # Counted only where it is shown as a link: a link Telegram is not given (not
            # http or https) is its text alone, and code in it needs its <code> as anywhere.
            closers.append(_link_open(child, out, nested=in_link > 0))
            in_link += bool(closers[-1])
        elif kind == "link_close":
            in_link -= bool(closers[-1])
            out.append(closers.pop())
        elif kind.endswith("_close"):
            out.append(closers.pop())
        elif kind == "image":  # its description, as text
            out.append(html.escape(to_text(_inline(child)), quote=False))
        else:
            out.append(_text(child.content))
    out.extend(reversed(closers))
    return "".join(out)


def _style_open(children: Sequence[Token], i: int, out: list[str]) -> str:
    token = children[i]
    if token.markup == "__" and _is_dunder(children, i):
        # `__init__`, `__name__`: a Python name, not bold (CommonMark would make it bold).
        out.append("__")
        return "__"
    tag = _STYLE[token.type[:-5]]
    out.append(f"<{tag}>")
    return f"</{tag}>"


def _is_dunder(children: Sequence[Token], i: int) -> bool:
    inner = children[i + 1] if i + 1 < len(children) else None
    after = children[i + 2] if i + 2 < len(children) else None
    return (
        inner is not None
        and inner.type == "text"
        and _DUNDER.fullmatch(inner.content) is not None
        and after is not None
        and after.type == "strong_close"
    )


def _link_open(token: Token, out: list[str], *, nested: bool) -> str:
    href = str(token.attrs.get("href", ""))
    if nested or urlsplit(href).scheme.lower() not in ("http", "https"):
        return ""
    out.append(f'<a href="{html.escape(href, quote=True)}">')
    return "</a>"
