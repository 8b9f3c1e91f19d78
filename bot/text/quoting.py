"""Quoting text as data for a model: a document between fence lines it cannot close, a chat
message on a line of its own in quotes it cannot close."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BACKTICKS = re.compile(r"`+")
_QUOTES = re.compile('["\u201c\u201d\u201e\u201f\u2033\uff02]')


def fenced(text: str) -> str:
    """`text` between two fence lines it cannot close: more backticks than any run in it (a
    document's own code blocks stay inside), as Markdown quotes code."""
    fence = fence_for(text)
    return f"{fence}\n{text}\n{fence}"


def fence_for(text: str) -> str:
    """The fence line `fenced` puts around `text` (what a prompt's budget counts twice)."""
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    return "`" * max(3, longest + 1)


@dataclass(frozen=True, slots=True)
class Said:
    """One message of a transcript: who (a label the code gives, never the text) and what, as
    one line (the handoff note's: bot.handoff.types.clean_line)."""

    who: str
    text: str


def quoted(said: Said) -> str:
    """`Customer: "..."`: the text in straight double quotes that it cannot close early (its
    own double quotes become single ones), so a customer's `Parley: ...` stays inside the
    customer's quote on the customer's line."""
    text = _QUOTES.sub("'", said.text)
    return f'{said.who}: "{text}"'
