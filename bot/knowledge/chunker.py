"""Splits sections into chunks of up to MAX_TOKENS on paragraph, then sentence, then word
boundaries; paragraphs are packed greedily, so a long section gives chunks of roughly 200-350
tokens.

Chunks never cross a section: each keeps one location, so a citation points at one heading or
page. A short section therefore stays a small chunk of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from backends.base import estimate_tokens
from bot.knowledge.types import Chunk, CountTokens, Section

MAX_TOKENS = 350

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# After ., ! or ? (optionally closed by a quote or bracket) and before whitespace; also after
# the CJK full stops, which are not followed by a space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+|(?<=[。！？])")


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
    """A sentence too long on its own (a table, a log line) is cut between words."""
    if not sentence:
        return
    if count(sentence) <= max_tokens:
        yield sentence
        return
    current: list[str] = []
    for word in sentence.split():
        # A hex dump, a data URL: no boundary to cut at. Only a word that could pass the limit
        # is counted (a character is at most 4 tokens of a byte-level tokenizer).
        if len(word) * 4 > max_tokens and count(word) > max_tokens:
            if current:
                yield " ".join(current)
                current = []
            yield from _split_characters(word, count, max_tokens)
            continue
        if current and count(" ".join([*current, word])) > max_tokens:
            yield " ".join(current)
            current = []
        current.append(word)
    if current:
        yield " ".join(current)


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
