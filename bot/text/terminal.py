"""Text for a terminal: its control characters shown, never obeyed."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with its control characters (C0, DEL, C1) shown as U+FFFD. An escape sequence
    in a document's title, a file's name or an answer would otherwise clear or rewrite the
    operator's terminal, set its title, or write to its clipboard (OSC 52). `lines`: line
    feeds and tabs are kept (a carriage return is not: it would let text overwrite a line)."""
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub("\ufffd", text)
