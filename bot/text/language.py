"""Offline language detection and the parsing of language names users type.

Detection uses py3langid (a naive Bayes model over byte n-grams, about 5 MB inside its wheel,
no downloads): it is deterministic, fast, and good on chat-length text. Before scoring, code,
URLs, mentions, hashtags and markup are removed (they are the same in every language and pull
short messages towards English), dialect labels are folded into their language, and the answer
is None rather than a guess when the text is too short or the model is unsure.
"""

from __future__ import annotations

import functools
import gettext
import re
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import emoji
import pycountry

from bot.errors import BotError

from .languages import ALIASES, FOLDED, NAMES
from .patterns import strip_non_prose

# Scripts written without spaces carry about a word per character, so one of them counts as
# several letters towards the minimum length.
_DENSE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_DENSE_WEIGHT = 4
_TAG_SUFFIX = re.compile(r"^([a-z]{2,3})(?:[-_][a-z0-9]{1,8})+$")
_PARENTHESIS = re.compile(r"\s*[(（].*?[)）]\s*")
# Longer than any language's name with a note in parentheses ("Chinese (Simplified)"): a
# longer argument is refused before the pattern above runs (quadratic on a run of spaces).
MAX_LANGUAGE_CHARS = 100
_EXAMPLES = "de, German, Deutsch, fr, French, zh-CN, 中文, pt-BR, Japanese, 日本語"


@dataclass(frozen=True, slots=True)
class Language:
    code: str  # ISO 639-1
    name: str  # English name
    confidence: float  # 0..1, the detector's probability for this language


class LanguageDetector:
    """Loads the model once (about 0.7 s); `detect` is then cheap and safe to share."""

    def __init__(self, *, min_confidence: float = 0.5, min_letters: int = 8) -> None:
        self.min_confidence = min_confidence
        self.min_letters = min_letters
        # Imported here, not with the module: py3langid imports numpy, which the document
        # reader's child process (bot.documents, through bot.text) must not load.
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        try:
            self._model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        except OSError as exc:  # py3langid unpacks its model into a temporary file first
            raise BotError(
                f"the language model cannot be unpacked in {tempfile.gettempdir()} "
                f"({exc.strerror}): free some room there, or point TMPDIR at a folder with "
                "room"
            ) from None
        # Labels with no ISO 639-1 code (and "zxx", not a language) cannot be answered.
        known = [label for label in self._model.labels if label in NAMES or label in FOLDED]
        self._model.set_languages(known)

    def detect(self, text: str) -> Language | None:
        """The main language of the text, or None when it is too short or unclear."""
        scores = self._scores(text)
        if not scores:
            return None
        code = max(scores, key=scores.__getitem__)  # the first of equals, as rank() orders
        if round(scores[code], 4) < self.min_confidence:
            return None
        return Language(code, NAMES[code], round(scores[code], 4))

    def rank(self, text: str) -> list[Language]:
        """Every language with its probability, best first; empty when the text is too short."""
        ordered = sorted(self._scores(text).items(), key=lambda item: item[1], reverse=True)
        return [Language(code, NAMES[code], round(p, 4)) for code, p in ordered]

    def _scores(self, text: str) -> dict[str, float]:
        """Each language's probability, dialects folded in; empty when the text is too short."""
        prose = prose_only(text)
        if _letter_weight(prose) < self.min_letters:
            return {}
        scores: dict[str, float] = {}
        for label, score in self._model.rank(prose):
            code = FOLDED.get(label, label)
            scores[code] = scores.get(code, 0.0) + float(score)
        return scores


@functools.cache
def default_detector() -> LanguageDetector:
    """One shared detector: the model is read-only after loading, so sharing it is safe."""
    return LanguageDetector()


def detect_language(text: str) -> Language | None:
    """The main language of a chat message, or None when unsure (see `LanguageDetector`)."""
    return default_detector().detect(text)


def prose_only(text: str) -> str:
    """The text without code, URLs, mentions, hashtags, markup and emoji."""
    return emoji.replace_emoji(strip_non_prose(text), replace=" ")


def normalize_language(user_input: str) -> str:
    """The ISO 639-1 code for what a user typed: "de", "German", "deutsch", "zh-CN", "中文".

    Raises ValueError with examples when the input names no known language.
    """
    if len(user_input) > MAX_LANGUAGE_CHARS:  # no name is this long; a long one is not read
        raise ValueError(
            f"Unknown language {user_input.strip()[:20]!r}... Give a language code or name, "
            f"for example: {_EXAMPLES}."
        )
    key = _fold(_PARENTHESIS.sub(" ", user_input))
    tag = _TAG_SUFFIX.match(key)
    for candidate in (key, tag.group(1) if tag else None):
        if candidate and candidate in _BY_NAME:
            return _BY_NAME[candidate]
    raise ValueError(
        f"Unknown language {user_input.strip()!r}. Give a language code or name, "
        f"for example: {_EXAMPLES}."
    )


def language_name(code: str, in_language: str | None = None) -> str:
    """The name of an ISO 639-1 code: in English ("de" -> "German"), or in `in_language` (an
    IETF tag: "de" in "fr" -> "allemand") where pycountry's ISO 639 catalogue has it, in English
    where it does not; the code itself if unknown. Prompts to the model take the English one."""
    english = NAMES.get(code, code)
    where = (in_language or "").replace("_", "-").split("-", 1)[0].lower()
    if code not in NAMES or where in ("", "en"):
        return english
    return _local_name(code, where) or english


@functools.cache
def _local_name(code: str, where: str) -> str | None:
    record = pycountry.languages.get(alpha_2=code)
    if record is None:
        return None
    # The catalogues are per locale; Chinese has two (zh_CN, zh_TW): the mainland one.
    catalogue = gettext.translation(
        "iso639-3", pycountry.LOCALES_DIR, languages=[where, f"{where}_CN"], fallback=True
    )
    local = catalogue.gettext(record.name)
    if local == record.name:  # not translated: English reads better than ISO's form of it
        return None
    # "中文; 汉语; 华语" -> "中文"; "Nepali (Makrosprache)" -> "Nepali".
    first = _ISO_QUALIFIER.sub("", local.split(";", 1)[0]).strip()
    return first or None


_ISO_QUALIFIER = re.compile(r"\s*[(（][^()（）]*[)）]\s*$")


@dataclass(frozen=True, slots=True)
class LanguageName:
    """A language's name as a field of a sentence said to a user: `phrases.say` writes it in
    the sentence's language (`say(NOW, "de", name=LanguageName("fr"))` -> "... Französisch")."""

    code: str

    def in_language(self, language: str | None) -> str:
        return language_name(self.code, language)

    def __str__(self) -> str:
        return language_name(self.code)


def _letter_weight(text: str) -> int:
    dense = len(_DENSE_SCRIPT.findall(text))
    letters = sum(1 for ch in text if ch.isalpha())
    return letters - dense + dense * _DENSE_WEIGHT


def _fold(text: str) -> str:
    """Case-, accent- and spacing-insensitive form, so "Français" matches "francais"."""
    decomposed = unicodedata.normalize("NFKD", text.strip().strip("\"'`«»“”"))
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(bare.casefold().replace("_", "-").split())


def _alias_index() -> Mapping[str, str]:
    index: dict[str, str] = {}
    for code, names in ALIASES.items():
        for name in (code, *names):
            index.setdefault(_fold(name), code)
    return MappingProxyType(index)


_BY_NAME = _alias_index()
