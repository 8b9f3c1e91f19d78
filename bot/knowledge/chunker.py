"""Splits sections into chunks of up to MAX_TOKENS on paragraph, then sentence, then word
boundaries; paragraphs are packed greedily, so a long section gives chunks of roughly 200-350
tokens.

Chunks never cross a section: each keeps one location, so a citation points at one heading or
page. A short section therefore stays a small chunk of its own.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator

from backends.base import estimate_tokens
from bot.knowledge.types import Chunk, CountTokens, Section

MAX_TOKENS = 350

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# After ., ! or ? (optionally closed by a quote or bracket) and before whitespace; also after
# the CJK full stops, which are not followed by a space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+|(?<=[。！？])")
_WORD = re.compile(r"\S+")
# Words of a long sentence read ahead at a time (more where one piece takes them all).
WORD_WINDOW = 4096


def chunk_sections(
    sections: Iterable[Section],
    count: CountTokens = estimate_tokens,
    *,
    max_tokens: int = MAX_TOKENS,
) -> list[Chunk]:
    return list(iter_chunks(sections, count, max_tokens=max_tokens))


def iter_chunks(
    sections: Iterable[Section],
    count: CountTokens = estimate_tokens,
    *,
    max_tokens: int = MAX_TOKENS,
) -> Iterator[Chunk]:
    """The chunks one at a time, so that a caller can stop at a limit."""
    for section in sections:
        pieces = _pieces(section.text, count, max_tokens)
        for text in _pack(pieces, count, max_tokens):
            yield Chunk(section.location, text, count(text))


def _pieces(text: str, count: CountTokens, max_tokens: int) -> Iterator[tuple[str, str]]:
    """(piece, separator to join it with the previous one); none longer than max_tokens."""
    for paragraph in _PARAGRAPH_BREAK.split(text.strip()):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if count(paragraph) <= max_tokens:
            yield paragraph, "\n\n"
            continue
        separator = "\n\n"
        for sentence in _SENTENCE_END.split(paragraph):
            for piece in _split_words(sentence.strip(), count, max_tokens):
                yield piece, separator
                separator = " "


def _split_words(sentence: str, count: CountTokens, max_tokens: int) -> Iterator[str]:
    """A sentence too long on its own (a table, a log line) is cut between words, each piece
    the longest run of words that fits. The run is found by doubling and halving its length
    from the last piece's, a few counts a piece: joining and counting the piece again for
    each word added counted each character of it hundreds of times (a 50 MB line of short
    words took two minutes). Words are read a window at a time, never all at once: a 50 MB
    line of them split whole held 1.4 GB."""
    if not sentence:
        return
    if count(sentence) <= max_tokens:
        yield sentence
        return
    pending = (match.group() for match in _WORD.finditer(sentence))
    words: list[str] = []  # the window: words read and not yet in a piece
    guess = 1
    ended = False
    while True:
        if not ended and len(words) < WORD_WINDOW:
            ended = _read(words, pending, WORD_WINDOW)
        if not words:
            return
        word = words[0]
        # A hex dump, a data URL: no boundary to cut at. Only a word that could pass the limit
        # is counted (a character is at most 4 tokens of a byte-level tokenizer).
        if len(word) * 4 > max_tokens and count(word) > max_tokens:
            yield from _split_characters(word, count, max_tokens)
            del words[0]
            continue
        taken = _words_that_fit(words, guess, count, max_tokens)
        while taken == len(words) and not ended:  # all fit: the piece may go on past them
            ended = _read(words, pending, len(words))
            taken = _words_that_fit(words, taken, count, max_tokens)
        yield " ".join(words[:taken])
        del words[:taken]
        guess = taken


def _read(words: list[str], pending: Iterator[str], more: int) -> bool:
    """`more` words of `pending` onto `words`; whether `pending` ended."""
    before = len(words)
    words.extend(itertools.islice(pending, more))
    return len(words) - before < more


def _words_that_fit(words: list[str], guess: int, count: CountTokens, max_tokens: int) -> int:
    """How many of the first `words` fit in one piece (one at least: the first fits alone,
    or is a word too long, which stops a run): searched from `guess` (the last piece's) in
    steps that double, up while it fits, down while it does not, then halved between the
    last that fit and the first that did not. Words of a kind fit in about as many as last
    time: two or three counts."""

    def fits(n: int) -> bool:
        return count(" ".join(words[:n])) <= max_tokens

    left = len(words)
    fit, over = 1, left + 1  # `fit` words fit; `over` words do not (left + 1: none past)
    probe, step = min(max(guess, 1), left), 1
    if probe > 1 and not fits(probe):
        over = probe
        while (probe := over - step) > 1 and not fits(probe):
            over, step = probe, 2 * step
        fit = max(probe, 1)
    else:
        fit = probe
        while fit < left and fits(probe := min(fit + step, left)):
            fit, step = probe, 2 * step
        if fit < left:
            over = probe
    while over - fit > 1:
        middle = (fit + over) // 2
        if fits(middle):
            fit = middle
        else:
            over = middle
    return fit


def _split_characters(word: str, count: CountTokens, max_tokens: int) -> Iterator[str]:
    """A word too long for one chunk, halved until each piece fits: without this a file of
    one 5 MB "word" was one 5 MB chunk, quoted whole into every answer that found it."""
    if len(word) <= 1 or count(word) <= max_tokens:
        yield word
        return
    middle = len(word) // 2
    yield from _split_characters(word[:middle], count, max_tokens)
    yield from _split_characters(word[middle:], count, max_tokens)


def _pack(pieces: Iterable[tuple[str, str]], count: CountTokens, max_tokens: int) -> Iterator[str]:
    """Greedy: pieces join until the next would pass max_tokens."""
    current = ""
    for piece, separator in pieces:
        joined = f"{current}{separator}{piece}" if current else piece
        if current and count(joined) > max_tokens:
            yield current
            current = piece
        else:
            current = joined
    if current:
        yield current
