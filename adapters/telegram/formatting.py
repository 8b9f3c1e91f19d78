"""The model's Markdown as Telegram HTML, in messages of at most 4096 characters.

Telegram's HTML mode knows a few tags (b, i, s, u, code, pre, a, blockquote) and rejects a
message whose tags do not nest. Each piece of Markdown is converted on its own, and every
rule turns one match into one opening and one closing tag, so the output always nests; what
looks like Markdown but is not (a lone `*`) stays as escaped text. Conversion only removes
characters (markup) or replaces one with one ("- " -> "• "), so a piece of Markdown of N
characters never shows more than N: splitting the Markdown is enough to respect the limit.
"""

from __future__ import annotations

import html
import re

_FENCE = re.compile(r"^\s{0,3}```\s*([\w+#.-]*)\s*$")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_QUOTE = re.compile(r"^>\s?(.*)$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\[([^\]<]+)\]\((https?://[^\s)]+)\)")
_BOLD = re.compile(r"\*\*(?!\s)([^<]+?)(?<!\s)\*\*|__(?!\s)([^<]+?)(?<!\s)__")
_ITALIC = re.compile(
    r"(?<![\w*])\*(?![\s*])([^<*]+?)(?<!\s)\*(?![\w*])|(?<!\w)_(?!\s)([^<_]+?)(?<!\s)_(?!\w)"
)
_STRIKE = re.compile(r"~~(?!\s)([^<]+?)(?<!\s)~~")
_TAG = re.compile(r"<[^>]+>")


def to_html(markdown: str) -> str:
    """Telegram-safe HTML for one message's worth of Markdown."""
    out: list[str] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is not None:
            end = _closing_fence(lines, i + 1)
            out.append(_pre("\n".join(lines[i + 1 : end]), fence.group(1)))
            i = end + 1
            continue
        out.append(_block_line(lines[i]))
        i += 1
    return "\n".join(out)


def to_text(telegram_html: str) -> str:
    """What a reader sees of Telegram HTML (tags dropped, entities decoded)."""
    return html.unescape(_TAG.sub("", telegram_html))


def _closing_fence(lines: list[str], start: int) -> int:
    """Index of the closing fence; an unclosed block (still streaming) runs to the end."""
    for j in range(start, len(lines)):
        fence = _FENCE.match(lines[j])
        if fence is not None and not fence.group(1):
            return j
    return len(lines)


def _pre(code: str, lang: str) -> str:
    attr = f' class="language-{html.escape(lang)}"' if lang else ""
    return f"<pre><code{attr}>{html.escape(code, quote=False)}</code></pre>"


def _block_line(line: str) -> str:
    if (m := _HEADING.match(line)) is not None:
        return f"<b>{inline(m.group(1))}</b>"
    if (m := _BULLET.match(line)) is not None:
        return f"{m.group(1)}• {inline(m.group(2))}"
    if (m := _QUOTE.match(line)) is not None:
        return f"<blockquote>{inline(m.group(1))}</blockquote>"
    return inline(line)


def inline(text: str) -> str:
    """Inline Markdown of one line; code spans are kept literally."""
    parts: list[str] = []
    pos = 0
    for m in _CODE_SPAN.finditer(text):
        parts.append(_emphasis(text[pos : m.start()]))
        parts.append(f"<code>{html.escape(m.group(2), quote=False)}</code>")
        pos = m.end()
    parts.append(_emphasis(text[pos:]))
    return "".join(parts)


def _emphasis(text: str) -> str:
    out = html.escape(text, quote=True)
    out = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', out)
    out = _BOLD.sub(lambda m: f"<b>{m.group(1) or m.group(2)}</b>", out)
    out = _ITALIC.sub(lambda m: f"<i>{m.group(1) or m.group(2)}</i>", out)
    return _STRIKE.sub(lambda m: f"<s>{m.group(1)}</s>", out)
