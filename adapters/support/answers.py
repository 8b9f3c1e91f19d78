"""What the support API says about an answer beyond its text: its sources, and whether it is
a notice (rate limited, model unavailable, refused) rather than an answer.

The core hands a platform text only. The question-answering skill ends an answer with its
sources under the catalogue's "Sources:" heading, one "[n] citation" line each (bot.skills.qa);
the notices are the core's own sentences (bot.phrases), said in one piece. Both are
recognised here in every language Parley speaks.
"""

from __future__ import annotations

import functools
import re

from bot import phrases
from bot.skills.qa import SOURCES

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
# An address, without the punctuation that closes the sentence or bracket around it.
_URL = re.compile(r"https?://\S+?(?=[.,;:!?)\]>'\"]*(?:\s|$))")


@functools.cache
def notice_texts() -> frozenset[str]:
    languages = ("", *phrases.LANGUAGES)
    return frozenset(phrases.say(n, lang) for n in NOTICES for lang in languages)


@functools.cache
def _headings() -> frozenset[str]:
    return frozenset(phrases.say(SOURCES, lang) for lang in ("", *phrases.LANGUAGES))


def sources(text: str) -> list[dict[str, str | None]]:
    """The sources listed at the end of an answer: [{"title", "url"}], [] when none."""
    lines = text.rstrip().split("\n")
    found: list[dict[str, str | None]] = []
    for line in reversed(lines):
        if line.strip() in _headings():
            return list(reversed(found))
        match = _CITATION.match(line.strip())
        if match is None:
            return []
        citation = match.group(2)
        url = _URL.search(citation)
        found.append({"title": citation, "url": url.group(0) if url else None})
    return []
