"""Per-language sentiment lexicons, read from bot/sentiment/lexicon/<code>.toml.

A lexicon file holds words and phrases with a valence (-4..4, the scale of VADER's lexicon),
anger cues (phrases that flag frustration and carry their own valence), politeness words,
functions (what should happen: "connect", "arrive"; they count only when negated), negators,
intensifiers and contrast words ("but"). A term ending in "*" matches any word that
starts with it, which covers the inflection of de, ru, pt, ... without listing every form.
Languages written without spaces (zh, ja) set `substrings = true`: their terms are found
inside the text rather than matched word by word.

The data lives in files, not code, so a lexicon can be corrected without touching the scorer.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

LEXICON_DIR = Path(__file__).with_name("lexicon")
# Emoji and emoticons: the same in every language, read with every lexicon.
COMMON = "common"
# Terms of these kinds are what the scorer adds up.
VALENCE, ANGER, POLITE = "valence", "anger", "polite"
# Things that should happen ("connect", "arrive", "call back"): they count only when negated,
# before them or (de, nl) after them: "doesn't connect", "verbindet sich nicht mehr".
FUNCTION = "function"
_SHORTEST_STEM = 3
# Most words a "..." in a term skips; punctuation that ends a clause (and a gap).
GAP = 5
CLAUSE_END = frozenset(".;:?!\n,")


@dataclass(frozen=True, slots=True)
class Term:
    """One lexicon entry: a word or a phrase, as word patterns ("*" ends a stem)."""

    words: tuple[str, ...]
    valence: float
    kind: str  # VALENCE, ANGER or POLITE

    def span(self, tokens: list[str], start: int) -> int:
        """How many tokens from `start` this term covers there; 0 when it does not match.
        A "..." between words allows up to GAP other words of the same clause between them
        ("funktioniert ... nicht" matches "funktioniert seit dem Update nicht")."""
        at = start
        gap = False
        for pattern in self.words:
            if pattern == "...":
                gap = True
                continue
            limit = min(len(tokens), at + 1 + (GAP if gap else 0))
            while at < limit and not _word_matches(pattern, tokens[at]):
                if not gap or tokens[at] in CLAUSE_END:
                    return 0
                at += 1
            if at >= limit:
                return 0
            at += 1
            gap = False
        return at - start


@dataclass(frozen=True, slots=True)
class Lexicon:
    code: str
    # First word pattern -> the terms that start with it, longest first.
    exact: Mapping[str, tuple[Term, ...]]
    stems: Mapping[str, tuple[Term, ...]]
    negators: frozenset[str]
    intensifiers: Mapping[str, float]
    contrast: frozenset[str]
    substrings: bool = False
    # For substring languages: every term as a plain string, longest first, and the
    # characters a term can start with (a text without any of them holds no term).
    ordered: tuple[Term, ...] = field(default=())
    initials: frozenset[str] = field(default=frozenset())

    def candidates(self, token: str) -> list[Term]:
        """The terms whose first word pattern matches `token`, longest phrases first."""
        found = list(self.exact.get(token, ()))
        for k in range(len(token), _SHORTEST_STEM - 1, -1):
            found.extend(self.stems.get(token[:k], ()))
        found.sort(key=lambda term: len(term.words), reverse=True)
        return found

    def is_negator(self, token: str) -> bool:
        return token in self.negators or token.endswith("n't")

    def boost(self, token: str) -> float:
        return self.intensifiers.get(token, 0.0)


def _word_matches(pattern: str, token: str) -> bool:
    if pattern.endswith("*"):
        return token.startswith(pattern[:-1])
    return pattern == token


@functools.cache
def available() -> frozenset[str]:
    """The language codes that have a lexicon file."""
    return frozenset(p.stem for p in LEXICON_DIR.glob("*.toml") if p.stem != COMMON)


@functools.cache
def load(code: str) -> Lexicon:
    """The lexicon of `code` merged with the common one (emoji, emoticons); cached."""
    data = _read(code)
    common = _read(COMMON)
    terms = list({t.words: t for t in (*_terms(common), *_terms(data))}.values())
    exact: dict[str, list[Term]] = {}
    stems: dict[str, list[Term]] = {}
    for term in terms:
        first = term.words[0]
        if first.endswith("*"):
            stems.setdefault(first[:-1], []).append(term)
        else:
            exact.setdefault(first, []).append(term)
    return Lexicon(
        code=code,
        exact=_frozen(exact),
        stems=_frozen(stems),
        negators=frozenset(_fold(w) for w in data.get("negators", [])),
        intensifiers=MappingProxyType(
            {_fold(k): float(v) for k, v in data.get("intensifiers", {}).items()}
        ),
        contrast=frozenset(_fold(w) for w in data.get("contrast", [])),
        substrings=bool(data.get("substrings", False)),
        ordered=tuple(sorted(terms, key=lambda t: len(" ".join(t.words)), reverse=True)),
        initials=frozenset(t.words[0][0] for t in terms if t.words and t.words[0]),
    )


def _read(code: str) -> dict[str, Any]:
    path = LEXICON_DIR / f"{code}.toml"
    with path.open("rb") as handle:
        return tomllib.load(handle)


def _terms(data: Mapping[str, Any]) -> Iterable[Term]:
    """Every entry once: a phrase listed twice keeps its last kind (anger over valence)."""
    found: dict[tuple[str, ...], Term] = {}
    for kind in (VALENCE, FUNCTION, POLITE, ANGER):
        table = data.get(kind, {})
        assert isinstance(table, dict), f"[{kind}] must be a table"
        for text, valence in table.items():
            words = tuple(tokenize(text)) if not data.get("substrings") else (_fold(text),)
            if words:
                found[words] = Term(words, float(valence), kind)
    return found.values()


def _frozen(index: dict[str, list[Term]]) -> Mapping[str, tuple[Term, ...]]:
    return MappingProxyType(
        {k: tuple(sorted(v, key=lambda t: len(t.words), reverse=True)) for k, v in index.items()}
    )


# A word (letters, digits, apostrophes inside it, a trailing "*" in lexicon files), "..." (a
# gap, in lexicon files), or one character of punctuation or symbol (emoji, "!", "?").
_TOKEN = re.compile(r"[\w][\w'’*]*|\.\.\.|[^\w\s]")


# Emoji presentation selectors and skin tones ("👍🏽" scores as "👍"), and the dot that
# casefolding leaves on Turkish "İ" (it would split the word).
_EMOJI_MODIFIERS = re.compile("[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff\u0307]")


def _fold(text: str) -> str:
    return _EMOJI_MODIFIERS.sub("", text.casefold().replace("’", "'").replace("ё", "е"))


def tokenize(text: str, *, casefold: bool = True) -> list[str]:
    """Words and single punctuation/symbol characters, casefolded unless asked not to (the
    capitals rule reads the same tokens as typed)."""
    folded = _fold(text) if casefold else _EMOJI_MODIFIERS.sub("", text.replace("’", "'"))
    return [t.rstrip("'") or t for t in _TOKEN.findall(folded)]
