"""Text for a terminal: its control characters shown, never obeyed."""

from __future__ import annotations

import re

# With the bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069):
# a title holding U+202E (RIGHT-TO-LEFT OVERRIDE) showed the rest of its line, the file's
# path included, reversed on a terminal that lays out bidirectional text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with its control characters (C0, DEL, C1, bidirectional) shown as U+FFFD. An
    escape sequence in a document's title, a file's name or an answer would otherwise clear or
    rewrite the operator's terminal, set its title, or write to its clipboard (OSC 52).
    `lines`: line feeds and tabs are kept (a carriage return is not: it would let text
    overwrite a line)."""
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub("\ufffd", text)
