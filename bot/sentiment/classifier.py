"""The offline sentiment classifier: a lexicon per language and VADER's rules around it.

No maintained package covers the fourteen languages Parley speaks offline (vaderSentiment
and afinn are English-first, asent needs spaCy and covers neither ru nor pt, the multilingual
ones download transformer models), so the rules of VADER (Hutto & Gilbert, 2014) are applied
here to our own lexicons (bot/sentiment/lexicon/*.toml, see lexicon.py):

- each matched word or phrase adds its valence; a negator in the three words before it flips
  and damps it ("not bad" is mildly positive), an intensifier before it strengthens it;
- after a contrast word ("but", "aber", "mais") the clause weighs 1.5, before it 0.5;
- a word in CAPITALS among lower-case ones weighs more; repeated "!" amplifies the sum;
- politeness ("thanks", "please") counts only outside questions: a support question that
  ends in "thanks" is still neutral, the default of support messages;
- anger cues ("third time", "still not", "unacceptable", "refund now"), shouting in
  capitals, or a negative message with "!!" / "?!" set the angry flag.

The sum is squashed to -1..1 as VADER does; beyond +-THRESHOLD it is positive / negative.
"""

from __future__ import annotations

import math
import re
from itertools import takewhile

from bot.text.language import detect_language

from .lexicon import (
    ANGER,
    CLAUSE_END,
    FUNCTION,
    POLITE,
    VALENCE,
    Lexicon,
    Term,
    available,
    load,
    tokenize,
)
from .types import Label, Sentiment

# |compound| beyond which a message is positive or negative: neutral is the default.
THRESHOLD = 0.3
# VADER's constants: normalisation, negation damping, boosts of "!" and capitals.
_ALPHA = 15.0
_NEGATION = -0.74
# "not happy" is plainly negative, "not bad" only mildly positive: negated praise weighs more.
_NEGATED_PRAISE = -0.9
_EXCLAMATION = 0.292
_CAPS = 0.733
_BEFORE_CONTRAST, _AFTER_CONTRAST = 0.5, 1.5
# Words weaker than this are left out of questions; "??" and "?!" weigh like a strong word.
_MILD = 1.5
_IMPATIENCE = 1.4
# A message this negative is angry even without an anger cue.
_FURIOUS = -0.8
# Only the start and the end of a long paste are read: enough for the tone, bounded time.
_HEAD = _TAIL = 1000
# The detector needs a sentence or two, not a whole paste.
_DETECT_CHARS = 400
_WINDOW = 3
_FALLBACK = "en"
# Three capitals in a row (Latin, Greek, Cyrillic): a word that may be shouted.
_LOUD_WORD = re.compile(r"[A-ZÀ-ÖØ-ÞΑ-ΩА-ЯЁІЇЄҐ]{3}")


def classify(text: str, language: str = "") -> Sentiment:
    """The sentiment of one customer message in `language` (ISO 639-1; "" detects it)."""
    text = _bounded(text)
    if not any(ch.isalnum() or ord(ch) > 0x2000 for ch in text):
        return Sentiment(Label.NEUTRAL, 1.0)
    code = _language(text, language)
    if code is None:  # too short to tell: the reading of the lexicon that knows most words
        words = _Words(text)  # split once for all the lexicons
        readings = [_score(text, load(c), words) for c in sorted(available())]
        compound, angry, _ = max(readings, key=lambda r: (r[2], abs(r[0])))
    else:
        compound, angry, _ = _score(text, load(code))
    return _sentiment(compound, angry)


def warm() -> None:
    """Load the language identifier and every lexicon now (about a second, blocking), so that
    a process's first customer message does not wait for them."""
    detect_language("warm up")
    for code in available():
        load(code)


def _bounded(text: str) -> str:
    text = text.replace("\x00", " ")
    if len(text) > _HEAD + _TAIL:
        text = f"{text[:_HEAD]}\n{text[-_TAIL:]}"
    return text


def _language(text: str, language: str) -> str | None:
    known = available()
    code = language.strip().lower().replace("_", "-").split("-")[0]
    if code in known:
        return code
    if code:  # a language without a lexicon: English terms and emoji still read
        return _FALLBACK
    found = detect_language(text[:_DETECT_CHARS])
    if found is None:
        return None
    return found.code if found.code in known else _FALLBACK


def _sentiment(compound: float, angry: bool) -> Sentiment:
    if angry and compound > -THRESHOLD:
        compound = -THRESHOLD - 0.05  # anger is negative whatever the words around it
    if compound >= THRESHOLD:
        label = Label.POSITIVE
    elif compound <= -THRESHOLD:
        label = Label.NEGATIVE
    else:
        return Sentiment(Label.NEUTRAL, round(1.0 - abs(compound), 3), angry=False)
    return Sentiment(label, round(0.5 + abs(compound) / 2, 3), angry=angry)


class _Words:
    """A text's tokens, casefolded and as typed, split once for any number of lexicons."""

    def __init__(self, text: str) -> None:
        plain = text.replace("*", " ")
        self.tokens = tokenize(plain)
        self.raw = tokenize(plain, casefold=False)


def _score(text: str, lex: Lexicon, words: _Words | None = None) -> tuple[float, bool, int]:
    """(compound -1..1, angry, number of terms matched)."""
    if lex.substrings:
        values, kinds = _substring_terms(text, lex)
    else:
        values, kinds = _word_terms(text, lex, words or _Words(text))
    question = "?" in text or "？" in text
    total = sum(v for v, k in zip(values, kinds, strict=True) if _counts(v, k, question))
    bangs = min(text.count("!") + text.count("！"), 4)
    if total and not question:
        total += math.copysign(bangs * _EXCLAMATION, total)
    impatient = "??" in text or "?!" in text or "!?" in text
    if impatient and total <= 0:  # "Where is my order??": not a calm question any more
        total -= _IMPATIENCE
    shouting = _shouting(text)
    if shouting and total < 0:
        total -= _CAPS
    compound = total / math.sqrt(total * total + _ALPHA)
    angry = (
        ANGER in kinds
        or compound <= _FURIOUS
        or (compound <= -THRESHOLD and (shouting or bangs >= 2 or "?!" in text or "!?" in text))
    )
    return compound, angry, len(values)


def _counts(value: float, kind: str, question: bool) -> bool:
    """In a question, politeness and mild words ("delay", "problem") do not count: "How long
    is the delay for Porto?" asks, it does not complain."""
    if not question:
        return True
    return kind == ANGER or (kind == VALENCE and abs(value) >= _MILD)


def _word_terms(text: str, lex: Lexicon, words: _Words) -> tuple[list[float], list[str]]:
    tokens, raw = words.tokens, words.raw
    values: list[float] = []
    kinds: list[str] = []
    contrast_at = -1
    clause = 0
    # A capitalised word stands out only among lower-case ones (shouting is _shouting's).
    caps_stand_out = not _capitals(text)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in CLAUSE_END or token in lex.contrast:
            clause = i + 1
            if token in lex.contrast:
                contrast_at = len(values)
            i += 1
            continue
        term, span = next(
            ((t, n) for t in lex.candidates(token) if (n := t.span(tokens, i))), (None, 0)
        )
        if term is None:
            i += 1
            continue
        value, kind = _weigh(term, tokens, i, span, clause, lex)
        if value and caps_stand_out and i < len(raw) and _capitals(raw[i]):
            value += math.copysign(_CAPS, value)
        values.append(value)
        kinds.append(kind)
        i += span
    if contrast_at >= 0:
        values = [
            v * (_BEFORE_CONTRAST if n < contrast_at else _AFTER_CONTRAST)
            for n, v in enumerate(values)
        ]
    return values, kinds


def _weigh(
    term: Term, tokens: list[str], i: int, span: int, clause: int, lex: Lexicon
) -> tuple[float, str]:
    """The value of a term found at tokens[i:i+span], after intensifiers and negation."""
    window = tokens[max(clause, i - _WINDOW) : i]
    value = term.valence * (1 + sum(lex.boost(w) for w in window[-2:]))
    # A term that holds its own negation ("doesn't work", "still not") is not turned again,
    # nor is an idiom ("leaves a lot to be desired"): only single words and functions are.
    negated = any(map(lex.is_negator, window)) and not any(map(lex.is_negator, term.words))
    negated = negated and (len(term.words) == 1 or term.kind == FUNCTION)
    if term.kind == FUNCTION:  # "connect": nothing, "doesn't connect" / "verbindet nicht": bad
        after = list(takewhile(lambda t: t not in CLAUSE_END, tokens[i + span : i + span + 5]))
        negated = negated or any(map(lex.is_negator, after))
        return (value if negated else 0.0), VALENCE
    if not negated:
        return value, term.kind
    if term.kind == POLITE:
        return 0.0, VALENCE
    # Negated anger is no anger ("I'm not angry, just confused").
    return value * (_NEGATED_PRAISE if value > 0 else _NEGATION), VALENCE


def _substring_terms(text: str, lex: Lexicon) -> tuple[list[float], list[str]]:
    """zh, ja: terms found inside the text, longest first, without overlaps."""
    folded = " ".join(tokenize(text))
    if lex.initials.isdisjoint(folded):  # no term can start anywhere: most texts, cheaply
        return [], []
    taken = [False] * len(folded)
    values: list[float] = []
    kinds: list[str] = []
    for term in lex.ordered:
        needle = " ".join(term.words)
        start = folded.find(needle)
        while start >= 0:
            end = start + len(needle)
            if not any(taken[start:end]):
                taken[start:end] = [True] * (end - start)
                before = folded[max(0, start - 2) : start]
                boost = sum(v for w, v in lex.intensifiers.items() if w in before)
                values.append(term.valence * (1 + boost))
                kinds.append(term.kind)
            start = folded.find(needle, end)
    return values, kinds


def _capitals(word: str) -> bool:
    letters = [ch for ch in word if ch.isalpha()]
    return len(letters) >= 3 and all(ch.isupper() for ch in letters)


def _shouting(text: str) -> bool:
    """Mostly capitals over several words: "WHY IS THIS STILL BROKEN"."""
    if len(_LOUD_WORD.findall(text)) < 3:  # the cheap test first: most messages are not loud
        return False
    words = [w for w in tokenize(text, casefold=False) if sum(ch.isalpha() for ch in w) >= 3]
    loud = sum(1 for w in words if _capitals(w))
    return loud >= 3 and loud >= 0.6 * len(words)
