"""Keep code, links, mentions, emoji, markup and glossary terms out of a translation.

`protect` swaps each such span for a numbered placeholder, the model translates the rest, and
`restore` puts the spans back. The placeholder is `⟦N⟧` (U+27E6, a number, U+27E7) because:

* the brackets almost never occur in chat text, are not Markdown or HTML syntax, and have no
  translation, so a model copies them as it copies any unknown symbol;
* the number has no letters, so a model that changes case (or transliterates) cannot break it;
  a model that writes it in another script's digits (`⟦٣⟧`) is still understood;
* there is no word in it a model might translate, as it would `[LINK]` or `__CODE__`.

`restore` also accepts spaces and direction marks inside the brackets and the look-alike
`〚N〛`, and removes spaces a model put between a placeholder and a character it was glued to
in the source (`[docs](⟦3⟧)` must not come back as `[Doku]( https://… )`). A placeholder the
model dropped is reported in `Restored.missing`, so the skill can append those spans or fall
back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import emoji

from . import patterns

# Spaces and the invisible direction marks a model may write in right-to-left text are allowed
# inside the brackets.
_RESTORE = re.compile(r"[⟦〚][ \t\u00a0\u200b-\u200f]*(\d{1,6})[ \t\u00a0\u200b-\u200f]*[⟧〛]")


class SpanKind(StrEnum):
    CODE_BLOCK = "code_block"
    INLINE_CODE = "inline_code"
    PLACEHOLDER = "placeholder"  # the source already contained ⟦N⟧: it must not be confused
    HTML = "html"
    LINK_TARGET = "link_target"
    URL = "url"
    EMAIL = "email"
    MENTION = "mention"
    HASHTAG = "hashtag"
    EMOJI = "emoji"
    GLOSSARY = "glossary"


# Earlier kinds win where matches overlap: a URL inside a code block is part of the block.
_ORDERED: tuple[tuple[SpanKind, re.Pattern[str]], ...] = (
    (SpanKind.CODE_BLOCK, patterns.FENCED_CODE),
    (SpanKind.INLINE_CODE, patterns.INLINE_CODE),
    (SpanKind.PLACEHOLDER, _RESTORE),
    (SpanKind.HTML, patterns.HTML_TAG),
    (SpanKind.HTML, patterns.HTML_ENTITY),
    (SpanKind.LINK_TARGET, patterns.MARKDOWN_LINK_DEFINITION),
    (SpanKind.LINK_TARGET, patterns.MARKDOWN_LINK_TARGET),
    (SpanKind.URL, patterns.URL),
    (SpanKind.EMAIL, patterns.EMAIL),
    (SpanKind.MENTION, patterns.MENTION),
    (SpanKind.HASHTAG, patterns.HASHTAG),
)


@dataclass(frozen=True, slots=True)
class Span:
    """One protected piece of the source and how it sat against its neighbours."""

    index: int
    kind: SpanKind
    text: str
    glued_left: bool  # a non-space character touched it on the left in the source
    glued_right: bool

    @property
    def placeholder(self) -> str:
        return placeholder(self.index)


@dataclass(frozen=True, slots=True)
class Protected:
    text: str  # the source with every span replaced by its placeholder
    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True)
class Restored:
    text: str
    missing: tuple[Span, ...]  # spans whose placeholder the model dropped, in source order

    @property
    def complete(self) -> bool:
        return not self.missing

    def with_missing_appended(self, separator: str = "\n") -> str:
        """The text with each dropped span added at the end, so nothing is lost."""
        return separator.join([self.text, *(s.text for s in self.missing)])


def placeholder(index: int) -> str:
    return f"⟦{index}⟧"


def protect(text: str, glossary: Iterable[str] = ()) -> Protected:
    """Replace every span that must survive translation unchanged with a placeholder."""
    ranges = _claim(text, tuple(glossary))
    spans: list[Span] = []
    pieces: list[str] = []
    cursor = 0
    for index, (start, end, kind) in enumerate(ranges):
        glued_left = start > 0 and not text[start - 1].isspace()
        glued_right = end < len(text) and not text[end].isspace()
        spans.append(Span(index, kind, text[start:end], glued_left, glued_right))
        pieces += [text[cursor:start], placeholder(index)]
        cursor = end
    pieces.append(text[cursor:])
    return Protected("".join(pieces), tuple(spans))


def restore(translated: str, protected: Protected) -> Restored:
    """Put the protected spans back into the model's translation."""
    by_index = {span.index: span for span in protected.spans}
    seen: set[int] = set()

    def put_back(match: re.Match[str]) -> str:
        span = by_index.get(int(match.group(1)))
        if span is None:  # a number the source never had: leave the model's text alone
            return match.group(0)
        seen.add(span.index)
        return _marker(span.index)

    marked = _RESTORE.sub(put_back, translated)
    for span in protected.spans:
        if span.index in seen:
            marked = _unglue(marked, span).replace(_marker(span.index), span.text)
    missing = tuple(s for s in protected.spans if s.index not in seen)
    return Restored(marked, missing)


def _claim(text: str, glossary: tuple[str, ...]) -> list[tuple[int, int, SpanKind]]:
    """Non-overlapping (start, end, kind) ranges, earlier kinds first, sorted by start."""
    taken: list[tuple[int, int, SpanKind]] = []
    for kind, pattern in _kinds(glossary):
        found = [(m.start(), m.end(), kind) for m in pattern.finditer(text)]
        taken = _take(taken, found)
    return _take(taken, [(start, end, SpanKind.EMOJI) for start, end in _emoji_runs(text)])


def _kinds(glossary: tuple[str, ...]) -> tuple[tuple[SpanKind, re.Pattern[str]], ...]:
    terms = patterns.glossary_pattern(glossary)
    return _ORDERED if terms is None else (*_ORDERED, (SpanKind.GLOSSARY, terms))


def _take(
    taken: list[tuple[int, int, SpanKind]], found: list[tuple[int, int, SpanKind]]
) -> list[tuple[int, int, SpanKind]]:
    """`taken` (sorted, non-overlapping) with each non-empty range of `found` (one kind's
    matches: sorted, non-overlapping) that overlaps none of `taken`, sorted. One pass over
    both: a paste with a span in every few characters has hundreds of thousands of them, and
    checking each against every span taken before took minutes."""
    kept = []
    later = 0  # the first of `taken` that ends after the current range's start
    for start, end, kind in found:
        while later < len(taken) and taken[later][1] <= start:
            later += 1
        if start < end and (later == len(taken) or taken[later][0] >= end):
            kept.append((start, end, kind))
    return sorted(taken + kept)


def _emoji_runs(text: str) -> list[tuple[int, int]]:
    """Adjacent emoji (and the spaces between them) as one span: fewer placeholders to keep."""
    runs: list[tuple[int, int]] = []
    for found in emoji.emoji_list(text):
        start, end = found["match_start"], found["match_end"]
        if runs and not text[runs[-1][1] : start].strip(" "):
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _marker(index: int) -> str:
    # A private-use character cannot come from the model, so a second pass cannot mistake a
    # restored span's own text (which may contain "⟦1⟧") for a placeholder.
    return f"\ue000{index}\ue001"


def _unglue(text: str, span: Span) -> str:
    marker = re.escape(_marker(span.index))
    if span.kind is SpanKind.CODE_BLOCK:
        # A fence only works on a line of its own: undo spaces or joined lines from the model.
        text = re.sub(rf"[ \t]*({marker})[ \t]*", r"\1", text)
        text = re.sub(rf"(?<=[^\n])(?={marker})|(?<={marker})(?=[^\n])", "\n", text)
        return text
    if span.glued_left:
        text = re.sub(rf"(?<=\S)[ \t]+(?={marker})", "", text)
    if span.glued_right:
        text = re.sub(rf"(?<={marker})[ \t]+(?=\S)", "", text)
    return text
