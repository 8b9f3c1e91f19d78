"""Splitting a long answer into messages of at most `limit`, for any platform.

The platform gives the limit and how it counts (`length`: UTF-16 units for Telegram,
characters for Discord); it must be additive (a text's length is the sum of its parts'), so
a longer prefix is never shorter, and count every character at least once (so only the first
`limit` characters are ever measured). The split works on the Markdown, before any rendering.

A cut goes, in order of preference, between two blocks (markdown-it's top-level blocks) or at
a blank line, at a line break, after a sentence, at a space; a good cut in the second half of
the message first, so pieces stay large. It never goes inside a code block: markdown-it's
token map gives each block's line range. Only a code block longer than a message is cut,
at a line, and then closed and reopened with the same fence and language. Each piece is
rendered alone, so a cut outside bold, strikethrough and links is preferred too. With no
boundary at all (one very long word) the cut goes between two characters, never inside an
emoji sequence, a flag or before a combining mark, unless one such sequence is longer than a
message (a letter with thousands of marks): then it is cut at the limit.

A platform whose inline markup may run on past a cut (Discord's spoilers) gives `reopen`:
what a piece leaves open, written again at the start of the next piece (the piece itself is
closed by the platform's rendering, and its `length` counts that closing).

Where a piece ends depends only on the first `limit` of the text after the previous piece
(and the one character after it), and a piece is cut only once the text after it is longer
than `limit`. So the pieces of a growing (streamed) text never change once more text follows
them: every piece but the last is final. Each piece is within `limit` and non-empty after
stripping.
"""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.lru import Lru

Length = Callable[[str], int]
# What a piece leaves open at its end, to open again at the start of the next piece.
Reopen = Callable[[str], str]

# Blocks only: where the lines of each block are is all a cut needs (inline parsing is most of
# markdown-it's time).
_BLOCKS = MarkdownIt("commonmark", {"html": False}).enable("table").disable("inline")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# A sentence ends after a word (not after "1." of a list); spaces count unless they follow
# nothing but a line's list or quote marker, which a cut would leave alone on its line.
# Chinese and Japanese put no space after 。！？, so none is needed after them.
_SENTENCE_END = re.compile(r"(?<![\s\d])(?:[.!?…][)\"'»”’]*\s|[。！？][)\"'»”’」』）】]*\s?)")
_SPACE = re.compile(r"\s")
_MARKER = re.compile(r"[ \t]*(?:[-*+>]|\d+[.)])(?P<blanks>[ \t]*)")
_ZWJ = "\u200d"
_TICKS = re.compile(r"`+")
# Inline markup whose two ends must stay in one piece (each piece is rendered alone): bold and
# strikethrough delimiters, and a link or image (its URL may run past the window).
_PAIRED = re.compile(r"\*\*|__|~~")
_LINK = re.compile(r"!?\[[^\[\]]*(?:\]\([^()\s]*\)?|\Z)")
# A code block's opening fence, at the start of a line.
_FENCE = re.compile(r" {0,3}(?:```|~~~)")
# Below this a re-fenced code block has no room for its code.
MIN_LIMIT = 32


def split_text(
    text: str, limit: int, *, length: Length = len, reopen: Reopen | None = None
) -> list[str]:
    """The pieces of `text`, each within `limit` by `length`; [] for a blank text."""
    return Splitter(limit, length=length, reopen=reopen).split(text)


class Splitter:
    """`split_text` that remembers its cuts. A streamed answer is split again on every update,
    and the windows of its finished pieces come back unchanged: only the newest is parsed."""

    def __init__(
        self,
        limit: int,
        *,
        length: Length = len,
        reopen: Reopen | None = None,
        memory: int = 64,
    ) -> None:
        if limit < MIN_LIMIT:
            raise ValueError(f"limit {limit} is below {MIN_LIMIT}")
        self.limit = limit
        self._length = length
        self._reopen = reopen
        self._cuts: Lru[_Cut] = Lru(memory)

    def split(self, text: str) -> list[str]:
        pieces: list[str] = []
        rest = text.strip()
        while len(rest) > self.limit or self._length(rest) > self.limit:
            end = fit(rest, self.limit, self._length)
            # The window, and the character after it (never a cut before an accent).
            seen = rest[: end + 1]
            cut = self._cuts.get(seen)
            if cut is None:
                cut = self._decide(seen, end)
                self._cuts.put(seen, cut)
            pieces.append(cut.piece)
            after = cut.rest_of(rest)
            if len(after) >= len(rest):  # what the piece left open, carried, moved nothing on
                after = replace(cut, carried="").rest_of(rest)
            rest = after
        if rest:
            pieces.append(rest)
        return pieces

    def _decide(self, seen: str, end: int) -> _Cut:
        # A length that is not additive (Discord's closing of a spoiler left open, which a
        # code block's closing fence may open) can put the piece as cut over a window that
        # fits: the window is then narrowed by the excess until the piece fits.
        while True:
            cut = _decide(seen[:end], seen[end:], self.limit, self._length)
            if self._reopen is not None:
                cut = self._carry(seen, end, cut, self._reopen)
            over = self._length(cut.piece) - self.limit
            if over <= 0 or end <= 1:
                return cut
            end = max(1, end - over)

    def _carry(self, seen: str, end: int, cut: _Cut, reopen: Reopen) -> _Cut:
        """`cut`, with what its piece leaves open opened again at the start of the rest. A
        piece that ends by opening markup with nothing in it yet leaves the markup to the
        next piece; one that is nothing but that markup (it opens a code block longer than
        a message) gets the window's cut after it, so every piece moves the text on."""
        markup = reopen(cut.piece)
        if not markup or cut.reopen or not cut.piece.endswith(markup):
            return cut.carrying(markup)
        before = cut.piece[: -len(markup)]
        if reopen(before):
            return cut.carrying(markup)  # the markup closes one and opens another
        if before.strip():
            return _Cut(before.rstrip(), len(before))
        start = len(cut.piece)
        while start < end and seen[start].isspace():
            start += 1
        head = seen[:start]
        room = self.limit - self._length(head)
        size = fit(seen[start:end], room, self._length)
        if size == 0 or room < MIN_LIMIT:
            return cut.carrying(markup)
        window = seen[start : start + size]
        after = _decide(window, seen[start + size : start + size + 1], room, self._length)
        piece = head + after.piece
        return _Cut(piece, start + after.at, after.reopen).carrying(reopen(piece))


def fit(text: str, limit: int, length: Length) -> int:
    """How many characters of `text` fit in `limit` (binary search: `length` is additive,
    and counts every character at least once)."""
    low, high = 0, min(len(text), limit)
    while low < high:
        mid = (low + high + 1) // 2
        if length(text[:mid]) <= limit:
            low = mid
        else:
            high = mid - 1
    return low


@dataclass(frozen=True, slots=True)
class _Code:
    """A code block of the window: characters [start, stop) hold its lines."""

    start: int
    stop: int
    fence: str  # "```" or "~~~" (any length); "" for an indented block
    info: str
    top_level: bool


class _Layout:
    """Where the window's blocks are, from markdown-it's token map (line ranges)."""

    def __init__(self, window: str) -> None:
        self.window = window
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", window)]
        self._markers: dict[int, tuple[int, int] | None] = {}  # line start: its blanks
        self.block_starts: list[int] = []
        self.code: list[_Code] = []
        for token in _BLOCKS.parse(window):
            if token.map is None or token.nesting == -1:
                continue
            if token.level == 0:
                self.block_starts.append(self._offset(token.map[0]))
            if token.type in ("fence", "code_block"):
                self.code.append(self._code(token.map[0], token.map[1], token))
        self.spans = _code_spans(window, self.code)
        # Each position's answer, worked out once: asked of every candidate, a look through
        # all the blocks and spans made a window of many (a run of "` `") quadratic.
        blocks = [(block.start, block.stop) for block in self.code]
        self._in_code = _covered(len(window) + 1, blocks + self.spans)
        self._inline = _covered(len(window) + 1, _inline_spans(window, self.spans))

    def _code(self, first: int, end: int, token: Token) -> _Code:
        stop = self._offset(end)
        last = self._line(end - 1)
        if token.type == "fence" and not _closes(last, token.markup, first < end - 1):
            stop = len(self.window) + 1  # still open: it runs on past the window's end
        elif self.window[stop - 1 : stop] == "\n":
            stop -= 1  # the newline after the block is outside it
        start = self._offset(first)
        return _Code(start, stop, token.markup, token.info, token.level == 0)

    def _line(self, line: int) -> str:
        return self.window[self._offset(line) : self._offset(line + 1)]

    def _offset(self, line: int) -> int:
        return self._line_starts[line] if line < len(self._line_starts) else len(self.window)

    def outside_code(self, pos: int) -> bool:
        return pos > 0 and not self._in_code[pos]

    def clear(self, pos: int) -> bool:
        """Outside code, bold, strikethrough and links."""
        return self.outside_code(pos) and not self._inline[pos]

    def candidates(self) -> list[list[int]]:
        """Cut positions, best kind first: blocks, lines, sentences, spaces."""
        w = self.window
        return [
            sorted({*self.block_starts, *(m.start() for m in _BLANK_LINE.finditer(w))}),
            [m.start() for m in re.finditer("\n", w)],
            [m.end() for m in _SENTENCE_END.finditer(w)],
            [m.start() for m in _SPACE.finditer(w) if not self._after_marker(m.start())],
        ]

    def _after_marker(self, pos: int) -> bool:
        """Whether nothing but a list or quote marker and blanks is before `pos` on its line.
        Each line's marker is read once: read again up to each space of a long line of them
        ("- " and 150,000 spaces, in a Chatwoot window), it was quadratic."""
        line_start = self._line_starts[bisect.bisect_right(self._line_starts, pos) - 1]
        if line_start not in self._markers:
            found = _MARKER.match(self.window, line_start)
            self._markers[line_start] = found.span("blanks") if found else None
        blanks = self._markers[line_start]
        return blanks is not None and blanks[0] <= pos <= blanks[1]


def _code_spans(window: str, blocks: list[_Code]) -> list[tuple[int, int]]:
    """Inline code spans, (start, stop): a cut inside one would leave its backticks to pair
    with the next piece's. A span ends at the next run of as many backticks within its
    paragraph; one still open runs to the paragraph's end (its closing run may follow the
    window). Only a preference: with no other cut, the cut goes anywhere as before. The
    fences of code blocks are not spans: a closing fence would run to the paragraph's end."""
    spans: list[tuple[int, int]] = []
    starts = [b.start for b in blocks]  # in order, never overlapping
    # Where the paragraphs end, found once: looked for after each opening, in a window with
    # no blank line (a run of "`" lines) each search read the rest of it (quadratic).
    # No blank line holds a backtick: the first found after an opening is the one after it.
    blanks = [m.start() for m in _BLANK_LINE.finditer(window)]
    pos = 0
    while (opening := _TICKS.search(window, pos)) is not None:
        i = bisect.bisect_right(starts, opening.start()) - 1
        if i >= 0 and opening.start() < blocks[i].stop:
            pos = blocks[i].stop
            continue
        j = bisect.bisect_left(blanks, opening.end())
        end = blanks[j] if j < len(blanks) else len(window) + 1
        closing = next(
            (
                run
                for run in _TICKS.finditer(window, opening.end(), end)
                if run.group() == opening.group()
            ),
            None,
        )
        stop = closing.start() if closing else end
        spans.append((opening.start(), stop))
        pos = closing.end() if closing else opening.end()
    return spans


def _inline_spans(window: str, code: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Bold/strikethrough spans (a delimiter pairs with the next same one in its paragraph)
    and links, outside code spans; one still open runs to its paragraph's end (its closing
    may follow the window). Like code spans, only a preference (`_best_cut`)."""
    spans: list[tuple[int, int]] = []
    starts = [a for a, _ in code]
    bounds = [0, *(m.end() for m in _BLANK_LINE.finditer(window)), len(window)]
    for start, end in itertools.pairwise(bounds):
        marks = [
            m for m in _PAIRED.finditer(window, start, end) if not _inside(m.start(), code, starts)
        ]
        opened: dict[str, int] = {}
        for mark in marks:
            at = opened.pop(mark.group(), None)
            if at is None:
                opened[mark.group()] = mark.start()
            else:
                spans.append((at, mark.end()))
        spans += [(at, end) for at in opened.values()]
        links = _LINK.finditer(window, start, end)  # \Z: the paragraph's end
        spans += [(m.start(), m.end()) for m in links if not _inside(m.start(), code, starts)]
    return spans


def _inside(pos: int, spans: list[tuple[int, int]], starts: list[int]) -> bool:
    """Whether `pos` is in one of `spans` (sorted, not overlapping: code spans)."""
    i = bisect.bisect_right(starts, pos) - 1
    return i >= 0 and pos < spans[i][1]


def _covered(size: int, spans: list[tuple[int, int]]) -> list[bool]:
    """For each position, whether it lies strictly inside one of `spans` (linear time)."""
    depth = [0] * (size + 1)
    for a, b in spans:
        if a + 1 < b:
            depth[a + 1] += 1
            depth[min(b, size)] -= 1
    covered, level = [], 0
    for pos in range(size):
        level += depth[pos]
        covered.append(level > 0)
    return covered


def _closes(line: str, fence: str, below_opening: bool) -> bool:
    """Whether `line` is the closing fence of a block opened with `fence`."""
    mark = line.strip()
    return below_opening and len(mark) >= len(fence) and set(mark) == {fence[0]}


@dataclass(frozen=True, slots=True)
class _Cut:
    """Where a window is cut: `piece` ends it; the rest starts at `at`, after `reopen` (a code
    block's fence, opened again) or with its leading whitespace dropped."""

    piece: str
    at: int
    reopen: str = ""
    carried: str = ""  # inline markup the piece leaves open (`Reopen`), opened again first

    def rest_of(self, text: str) -> str:
        if self.reopen:
            rest = self.reopen + text[self.at :].removeprefix("\n")
        else:
            rest = text[self.at :].lstrip()
        if self.carried and _FENCE.match(rest):
            return f"{self.carried}\n{rest}"  # a fence starts its line
        return self.carried + rest

    def carrying(self, markup: str) -> _Cut:
        """This cut, with `markup` opened again at the start of the rest."""
        return _Cut(self.piece, self.at, self.reopen, markup)


def _decide(window: str, following: str, limit: int, length: Length) -> _Cut:
    layout = _Layout(window)
    cut = _best_cut(layout)
    if cut is not None:
        return _Cut(window[:cut].rstrip(), cut)
    code = layout.code[0] if layout.code and layout.code[0].start == 0 else None
    if code is not None and code.top_level:
        refenced = _cut_inside_code(window, code, limit, length)
        if refenced is not None:
            return refenced
    return _hard_cut(window, following)


def _best_cut(layout: _Layout) -> int | None:
    half = len(layout.window) // 2
    kinds = layout.candidates()
    # A good boundary in the second half first, outside bold and links if there is one.
    for usable in (layout.clear, layout.outside_code):
        for positions in kinds:
            good = [p for p in positions if p >= half and usable(p)]
            if good:
                return good[-1]
    anywhere = [p for positions in kinds for p in positions if layout.outside_code(p)]
    return max(anywhere) if anywhere else None


def _cut_inside_code(window: str, code: _Code, limit: int, length: Length) -> _Cut | None:
    """The window is one code block: cut it at a line, close it, reopen it with its fence."""
    opening = f"{code.fence}{code.info}\n"
    closing = f"\n{code.fence}"
    room = window[: fit(window, limit - length(closing), length)]
    first = room.find("\n")
    if first < 0 or length(opening) + length(closing) > limit // 2:
        return None  # an opening line too long to repeat: cut it like text
    line = room.rfind("\n")
    # At the last line break that leaves code in the piece, else inside the line.
    cut = line if line > first + 1 else _grapheme_boundary(window, len(room), first + 1)
    if cut <= first + 1:
        return None  # no code would fit after the opening line
    return _Cut(room[:cut] + closing, cut, reopen=opening)


def _hard_cut(window: str, following: str) -> _Cut:
    """No boundary at all: the last line break, else between two characters."""
    line = window.rfind("\n")
    cut = line if line > 0 else _grapheme_boundary(window + following, len(window))
    return _Cut(window[:cut].rstrip(), cut)


def _grapheme_boundary(text: str, pos: int, begin: int = 0) -> int:
    """`pos`, moved back so it splits no emoji sequence, no flag and no letter from its
    accent. Where the text from `begin` (a code block's first line after its fence) is one
    such sequence up to `pos` (a letter with thousands of marks, a run of joiners), `pos`
    itself: moved back to the start, every piece of it was one character, and the answer
    hundreds of messages."""
    start = pos
    while begin + 1 < pos < len(text) and _inside_cluster(text, pos):
        pos -= 1
    return start if pos == begin + 1 and _inside_cluster(text, pos) else pos


def _inside_cluster(text: str, pos: int) -> bool:
    return 0 < pos < len(text) and (_joins(text[pos - 1], text[pos]) or _inside_flag(text, pos))


def _joins(before: str, after: str) -> bool:
    return (
        before == _ZWJ
        or after == _ZWJ
        or unicodedata.combining(after) != 0
        or unicodedata.category(after) in ("Mn", "Me", "Mc")
        or "\ufe00" <= after <= "\ufe0f"  # variation selectors
        or "\U0001f3fb" <= after <= "\U0001f3ff"  # skin tones
        or "\U000e0020" <= after <= "\U000e007f"  # tags: 🏴 + "gbeng" + cancel is England
    )


def _inside_flag(text: str, pos: int) -> bool:
    """Whether `pos` falls between the two regional indicators of a flag: they pair from the
    left, so an odd run of them before `pos` leaves the last one waiting for its partner."""
    if not (_is_regional_indicator(text[pos - 1]) and _is_regional_indicator(text[pos])):
        return False
    start = pos - 1
    while start > 0 and _is_regional_indicator(text[start - 1]):
        start -= 1
    return (pos - start) % 2 == 1


def _is_regional_indicator(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"
