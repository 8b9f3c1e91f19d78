"""Splitting a long answer into Telegram messages (4096 characters, counted in UTF-16 units).

The split works on the Markdown, before conversion, and each piece is converted on its own,
so no HTML tag is ever cut. A cut goes, in order of preference, at a paragraph break, a line
break, the end of a sentence, a space, and never inside a fenced code block; only a code block
longer than a message is cut, at a line, and then closed and reopened with the same fence.

The cut inside the first `limit` units depends only on those units, so the pieces of a
growing (streamed) text never change once more text follows them: every piece but the last is
final, and the streamer can send it while the answer is still being written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MAX_MESSAGE = 4096
_FENCE_LINE = re.compile(r"(?m)^\s{0,3}```\s*([\w+#.-]*)\s*$")
_SENTENCE_END = re.compile(r"[.!?…][)\"'»”]*\s")
_CLOSE = "\n```"


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    parts: list[str] = []
    rest = text.strip()
    while utf16_len(rest) > limit:
        part, rest = _cut(rest, limit)
        parts.append(part)
    parts.append(rest)
    return parts


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _prefix_len(text: str, limit: int) -> int:
    """The most characters of `text` that fit in `limit` UTF-16 units."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def _cut(text: str, limit: int) -> tuple[str, str]:
    window = text[: _prefix_len(text, limit)]
    blocks = list(_code_blocks(window))
    cut = _best_cut(window, blocks)
    if cut is None:
        return _cut_inside_code(text, window, blocks, limit)
    return text[:cut].rstrip(), text[cut:].lstrip()


def _code_blocks(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, language) of each fenced block; an unclosed one runs to the end."""
    opened: tuple[int, str] | None = None
    for m in _FENCE_LINE.finditer(text):
        if opened is None:
            opened = (m.start(), m.group(1))
        elif not m.group(1):
            yield opened[0], m.end(), opened[1]
            opened = None
    if opened is not None:
        yield opened[0], len(text), opened[1]


def _best_cut(window: str, blocks: list[tuple[int, int, str]]) -> int | None:
    def outside(pos: int) -> bool:
        return pos > 0 and all(not (start < pos < end) for start, end, _ in blocks)

    candidates = [
        [m.start() for m in re.finditer(r"\n\s*\n", window)],
        [m.start() for m in re.finditer(r"\n", window)],
        [m.end() for m in _SENTENCE_END.finditer(window)],
        [m.start() for m in re.finditer(r"\s", window)],
    ]
    half = len(window) // 2
    for positions in candidates:  # a good boundary in the second half first
        good = [p for p in positions if p >= half and outside(p)]
        if good:
            return good[-1]
    anywhere = [p for positions in candidates for p in positions if outside(p)]
    if anywhere:
        return max(anywhere)
    if blocks and blocks[-1][1] == len(window) and blocks[-1][0] > 0:
        return blocks[-1][0]  # text, then a code block too long to share a message
    return None


def _cut_inside_code(
    text: str, window: str, blocks: list[tuple[int, int, str]], limit: int
) -> tuple[str, str]:
    """The window is one code block (or one unbroken word): cut at a line and re-fence."""
    if not blocks or blocks[-1][1] != len(window):
        return text[: len(window)], text[len(window) :]
    room = window[: _prefix_len(window, limit - len(_CLOSE))]
    line = room.rfind("\n")
    cut = line if line > room.find("\n") else len(room)
    lang = blocks[-1][2]
    rest = text[cut:].removeprefix("\n")
    return room[:cut] + _CLOSE, f"```{lang}\n{rest}"
