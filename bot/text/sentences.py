"""Splitting text into sentences, in any script, without a model.

Rules, in order: blank lines and list items always start a new sentence; `。！？` end one
wherever they stand (Chinese and Japanese put no space after them); `! ? ؟ । ۔` end one before
a space; `.` and `…` end one before a space unless the word before is an abbreviation ("e.g.",
"Dr.", "z.B.", an initial) or the next word starts in lower case, which is how "e.g. the" and
"approx. twenty" stay whole; but in a block whose writer does not capitalise (its first letter
is lower case: "ok. this is it. thanks.") and in a piece still longer than `LONG_SENTENCE`
characters, a lower-case word after a period does start a sentence, abbreviations aside. A
decimal ("3.14") has no space after its point and never splits. A piece still longer than
`LONG_SENTENCE` (Thai, which puts a space between sentences, or a transcript with no
punctuation) is cut into pieces of at most `MAX_PIECE` characters, after a clause mark or a
space in the second half of each, or at the bound where it has neither.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right

_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
# A line that opens a list item or a heading starts a sentence even without a blank line.
_ITEM_START = re.compile(r"\n(?=[ \t]*(?:[-*•+]|\d{1,3}[.)]|#{1,6})[ \t]+\S)")
_CLOSERS = re.escape("\"'”’»)]」』）】")
_WIDE_END = re.compile(rf"[。！？．]+[{_CLOSERS}]*\s*")
# A run of marks is taken whole, from its first mark, never backtracked into: a match tried at
# every mark of a long run ("x....x", 20,000 dots), each scanning to the run's end, was
# quadratic, seconds of the event loop with the interpreter lock held (a helper's review).
_SPACED_END = re.compile(rf"(?:(?<![!?؟।॥۔])[!?؟।॥۔]++|(?<![.…])[.…]++)[{_CLOSERS}]*+(?=\s)\s+")
_DOTTED = re.compile(r"^(?:\w\.)+\w?$|^[^\W\d_]$")  # "U.S", "z.B", "т.е", or one letter: "J"
# Lower-cased, without the final period: titles, Latin and the commonest German, French,
# Spanish, Portuguese and Russian short forms. "etc." and "usw." are left out: they usually
# end a sentence.
_ABBREVIATION_LIST = (
    "mr mrs ms dr prof sr sra jr st mt no nr nos vs fig figs approx ca cf al ed eds vol pp p"
    " inc ltd co corp dept est min max jan feb mar apr jun jul aug sep sept oct nov dec"
    " e.g i.e eg ie viz resp bzw ggf inkl bspw evtl vgl sog d.h z.b u.a mme mlle m"
    " av avda dra núm pág sres tel ст г гг т.е т.д т.п др стр рис см"
)
_ABBREVIATIONS = frozenset(_ABBREVIATION_LIST.split())
# Longer than any sentence people write: a piece this long was cut only by the lower-case rule.
LONG_SENTENCE = 1000
# What an unpunctuated piece is cut into: a summary picks a few pieces, so it is shorter than
# the text (it was the whole text, one "sentence" of 4,600 characters of Thai).
MAX_PIECE = 300
_CLAUSE_MARK = re.compile(r"[,;:،؛、，；：—]\s*")
_SPACE = re.compile(r"\s+")
_FIRST_CASED = re.compile(r"[^\W\d_]")


def split_sentences(text: str) -> list[str]:
    """The sentences of the text, each stripped, in order; empty pieces are dropped."""
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        for block in _ITEM_START.split(paragraph):
            sentences += _split_block(block)
    return sentences


def _split_block(block: str) -> list[str]:
    first = _FIRST_CASED.search(block)
    lower_starts = first is not None and first.group(0).islower()
    sentences: list[str] = []
    for piece in _cut(block, lower_starts):
        if len(piece) > LONG_SENTENCE and not lower_starts:
            pieces = _cut(piece, lower_starts=True)
        else:
            pieces = [piece]
        for p in pieces:
            sentences += _cut_long(p) if len(p) > LONG_SENTENCE else [p]
    return sentences


def _cut_long(piece: str) -> list[str]:
    """The piece in parts of at most MAX_PIECE characters: each ends after the last clause mark
    in its second half, else after the last space there, else at the bound (not before a
    combining mark, which belongs to the letter before it)."""
    clauses = [m.end() for m in _CLAUSE_MARK.finditer(piece)]
    spaces = [m.end() for m in _SPACE.finditer(piece)]
    parts: list[str] = []
    start = 0
    while len(piece) - start > MAX_PIECE:
        bound = start + MAX_PIECE
        end = _last_between(clauses, bound - MAX_PIECE // 2, bound)
        end = end or _last_between(spaces, bound - MAX_PIECE // 2, bound) or _hard_cut(piece, bound)
        parts.append(piece[start:end])
        start = end
    parts.append(piece[start:])
    return [p.strip() for p in parts if p.strip()]


def _last_between(offsets: list[int], low: int, high: int) -> int | None:
    i = bisect_right(offsets, high)
    return offsets[i - 1] if i and offsets[i - 1] > low else None


def _hard_cut(piece: str, bound: int) -> int:
    end = bound
    while end > bound - MAX_PIECE // 2 and unicodedata.category(piece[end])[0] == "M":
        end -= 1
    return end


def _cut(block: str, lower_starts: bool) -> list[str]:
    pieces: list[str] = []
    start = 0
    for end in _boundaries(block, lower_starts):
        pieces.append(block[start:end])
        start = end
    pieces.append(block[start:])
    return [p.strip() for p in pieces if p.strip()]


def _boundaries(block: str, lower_starts: bool) -> list[int]:
    """Offsets where a new sentence starts."""
    ends = {m.end() for m in _WIDE_END.finditer(block)}
    ends |= {m.end() for m in _SPACED_END.finditer(block) if _ends_sentence(block, m, lower_starts)}
    return sorted(e for e in ends if 0 < e < len(block))


def _ends_sentence(block: str, match: re.Match[str], lower_starts: bool) -> bool:
    mark = match.group(0).rstrip()
    if not mark.startswith((".", "…")):
        return True
    following = block[match.end() : match.end() + 1]
    if following.islower() and not lower_starts:
        return False
    before = _word_before(block, match.start())
    return not before or not _is_abbreviation(before)


def _word_before(block: str, end: int) -> str:
    """The characters before `end` back to the previous space. Read backwards: a search from
    the block's start (as `\\S+$` did) made a long paragraph quadratic, minutes for a paste."""
    start = end
    while start > 0 and not block[start - 1].isspace():
        start -= 1
    return block[start:end]


def _is_abbreviation(word: str) -> bool:
    bare = word.lstrip("(\"'«“").casefold()
    return bare in _ABBREVIATIONS or bool(_DOTTED.match(bare))
