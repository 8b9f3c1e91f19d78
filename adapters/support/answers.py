"""What the support API says about an answer beyond its text: its sources, and whether it is
a notice (rate limited, model unavailable, refused) rather than an answer.

The core hands a platform text only. The question-answering skill ends an answer with its
sources under the catalogue's "Sources:" heading, one "[n] citation" line each (bot.skills.qa);
without a model it quotes the passages instead, each under its "[n] citation" line, after
the catalogue's NO_MODEL_QUOTE sentence: those citations are the sources too. The notices
are the core's own sentences (bot.phrases), said in one piece. Both are recognised here in
every language Parley speaks.
"""

from __future__ import annotations

import functools
import re

from bot import phrases
from bot.skills.qa import NO_MODEL_QUOTE, SOURCES

# The core's sentences that are about the service rather than an answer to the question.
NOTICES = (
    phrases.RATE_LIMITED,
    phrases.UNAVAILABLE,
    phrases.TIMEOUT,
    phrases.NOT_ALLOWED,
    phrases.GENERIC,
    phrases.NO_MODEL,
)
_CITATION = re.compile(r"^\[(\d+)\] (.+)$")
# An address; the punctuation that closes the sentence or bracket around it is taken off
# after (a lazy match with a look-ahead took quadratic time on a long address).
_URL = re.compile(r"https?://\S+")
_CLOSING = ".,;:!?)]>'\""


@functools.cache
def notice_texts() -> frozenset[str]:
    languages = ("", *phrases.LANGUAGES)
    return frozenset(phrases.say(n, lang) for n in NOTICES for lang in languages)


@functools.cache
def _headings() -> frozenset[str]:
    return frozenset(phrases.say(SOURCES, lang) for lang in ("", *phrases.LANGUAGES))


@functools.cache
def _quote_headings() -> frozenset[str]:
    return frozenset(phrases.say(NO_MODEL_QUOTE, lang) for lang in ("", *phrases.LANGUAGES))


def sources(text: str) -> list[dict[str, str | None]]:
    """The sources of an answer: [{"title", "url"}], [] when none. Those listed at its end,
    or, for the passages quoted without a model, each passage's citation."""
    return _listed(text) or _quoted(text)


def _listed(text: str) -> list[dict[str, str | None]]:
    lines = text.rstrip().split("\n")
    found: list[dict[str, str | None]] = []
    for line in reversed(lines):
        if line.strip() in _headings():
            return list(reversed(found))
        match = _CITATION.match(line.strip())
        if match is None:
            return []
        found.append(_source(match.group(2)))
    return []


def _quoted(text: str) -> list[dict[str, str | None]]:
    heading, _, rest = text.strip().partition("\n\n")
    if heading.strip() not in _quote_headings():
        return []
    found = []
    for block in rest.split("\n\n"):
        match = _CITATION.match(block.strip().partition("\n")[0])
        if match is not None:
            found.append(_source(match.group(2)))
    return found


def _source(citation: str) -> dict[str, str | None]:
    url = _URL.search(citation)
    return {"title": citation, "url": url.group(0).rstrip(_CLOSING) if url else None}
