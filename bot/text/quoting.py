"""Quoting text as data for a model: a document between fence lines it cannot close, a chat
message on a line of its own in quotes it cannot close."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_BACKTICKS = re.compile(r"`+")
_QUOTES = re.compile('["\u201c\u201d\u201e\u201f\u2033\uff02]')
# Hangul fillers (U+115F, U+1160; U+3164 and U+FFA0 fold to U+1160) are letters to Unicode,
# so `\w` keeps them, but they show nothing: the usual "blank" display name.
_NOT_IN_A_LABEL = re.compile(r"[^\w .'-]|[\u115f\u1160]")
# Combining marks that show nothing of their own (the grapheme joiner, variation selectors,
# Mongolian and Khmer ones): dropped like the fillers. Every other mark is part of a letter.
_INVISIBLE_MARKS = re.compile("[\u034f\u17b4\u17b5\u180b-\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef]")
# Marks that draw a colon beside their letter (a visarga, in Brahmic scripts and others):
# "Bobः Mallory" would read as Bob's label and then Mallory's. Known by their names.
_COLON_MARK_NAMES = ("VISARGA", "RNAM BCAD", "REAHMUK", "BISAH", "WIGNYAN")
# Marks a letter may carry in a label: Devanagari, Thai and the like need two at most (a
# vowel sign and another); a stack of them is decoration that would cover the label's line.
_MARKS_A_LETTER = 3


def fenced(text: str) -> str:
    """`text` between two fence lines it cannot close: more backticks than any run in it (a
    document's own code blocks stay inside), as Markdown quotes code."""
    fence = fence_for(text)
    return f"{fence}\n{text}\n{fence}"


# The info string of the fence a document sent in a chat travels in (bot.conversation.intake):
# what tells a document's block from a block of code a user typed, which stays as typed (a
# skill unwraps the first only; translation keeps the second untranslated).
DOCUMENT = "document"


def fenced_document(text: str) -> str:
    """A document's `text` as `fenced` quotes it, its opening fence line marked `DOCUMENT`."""
    fence = fence_for(text)
    return f"{fence}{DOCUMENT}\n{text}\n{fence}"


def unfenced(text: str) -> str:
    """The text of a block `fenced_document` made (`unfenced(fenced_document(t)) == t`); any
    other text (no fence, a block a user typed, a fence of another length than it gives its
    text, a run as long inside, text before or after the block) unchanged. What a skill takes
    as its material: a document's text, without the fence lines its message carries it in
    (bot.conversation.intake)."""
    first = text.find("\n")
    opening = text[:first]
    fence = opening.removesuffix(DOCUMENT)
    if first < 0 or fence == opening or len(fence) < 3 or fence.strip("`"):
        return text
    if not text.endswith(f"\n{fence}") or len(text) < len(opening) + len(fence) + 2:
        return text
    inner = text[first + 1 : len(text) - len(fence) - 1]
    return inner if fence_for(inner) == fence else text


def split_fenced(text: str) -> tuple[str, str] | None:
    """(what comes before, the block) where `text` ends with a block `fenced_document` made,
    after a blank line or alone ("" before it): a document's message is its caption, a blank
    line and its text fenced (bot.conversation.intake). None for any other text."""
    fence = text[text.rfind("\n") + 1 :]
    if len(fence) < 3 or fence.strip("`"):
        return None
    # No line inside a block is its fence: the last one before the closing line opens it.
    at = text.rfind(f"\n\n{fence}{DOCUMENT}\n")
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


def _shows_as_part_of_its_letter(mark: str) -> bool:
    """Not invisible, not drawn over the letter (an overlay, combining class 1: a stroke or a
    slash that hides it) and not a colon beside it."""
    if _INVISIBLE_MARKS.match(mark) or unicodedata.combining(mark) == 1:
        return False
    name = unicodedata.name(mark, "")
    return not any(word in name for word in _COLON_MARK_NAMES)


def speaker(name: str) -> str:
    """A member's display name as a label: letters, digits, spaces and `.'-` only, after NFKC,
    a letter with its combining marks (three at most: a vowel sign, an accent) (fullwidth and
    compatibility forms folded; invisible format characters and marks, Hangul fillers and
    every colon or bracket dropped), so that it can neither end early, hold another
    label, be invisible, nor read as the bot's. The transcripts' labels (/summarize,
    /history) and a shared conversation's prompt turns (bot.conversation.window.
    speaker_prefix) are all this one."""
    folded = unicodedata.normalize("NFKC", name)
    kept: list[str] = []
    marks = 0  # on the letter kept last
    for char in folded:
        if unicodedata.category(char) in ("Mn", "Mc"):
            # A vowel sign or an accent of the letter before it ("अनिल", "สมชาย"): kept with
            # it, where `\w` alone turned every one into a space. Anywhere else (after a
            # digit too), or one that hides its letter or reads as a colon, dropped.
            carried = kept and (kept[-1].isalpha() or 0 < marks < _MARKS_A_LETTER)
            if carried and _shows_as_part_of_its_letter(char):
                kept.append(char)
                marks += 1
            continue
        marks = 0
        kept.append(" " if _NOT_IN_A_LABEL.match(char) else char)
    return " ".join("".join(kept).split()) or "someone"
