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


def unfenced(text: str) -> str:
    """The text of a block `fenced` made (`unfenced(fenced(t)) == t`); any other text (no
    fence, a fence of another length than `fenced` gives its text, a run as long inside, text
    before or after the block) unchanged. What a skill takes as its material: a document's
    text, without the fence lines its message carries it in (bot.conversation.intake)."""
    first = text.find("\n")
    fence = text[:first]
    if first < 3 or fence.strip("`") or not text.endswith(f"\n{fence}"):
        return text
    inner = text[first + 1 : len(text) - len(fence) - 1]
    if len(text) < 2 * len(fence) + 2 or fence_for(inner) != fence:
        return text
    return inner


def split_fenced(text: str) -> tuple[str, str] | None:
    """(what comes before, the block) where `text` ends with a block `fenced` made, after a
    blank line or alone ("" before it): a document's message is its caption, a blank line and
    its text fenced (bot.conversation.intake). None for any other text."""
    fence = text[text.rfind("\n") + 1 :]
    if len(fence) < 3 or fence.strip("`"):
        return None
    # No line inside a block is its fence: the last one before the closing line opens it.
    at = text.rfind(f"\n\n{fence}\n")
    block = text[at + 2 :] if at != -1 else text
    if unfenced(block) == block:
        return None
    return (text[:at] if at != -1 else ""), block


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
