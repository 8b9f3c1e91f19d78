"""The sentences Parley says itself: every one in every language, with the same fields."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest

from bot import errors, phrases
from bot.text import LanguageName

ROOT = Path(__file__).resolve().parents[1]


def _marked_sentences() -> set[str]:
    """Every string literal passed to N_() anywhere in Parley's packages."""
    found: set[str] = set()
    for package in ("bot", "adapters", "backends"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name | ast.Attribute)
                    and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == "N_"
                ):
                    argument = node.args[0]
                    value = argument.value if isinstance(argument, ast.Constant) else None
                    assert isinstance(value, str), f"N_() of a non-literal in {path}"
                    found.add(value)
    return found


SENTENCES = sorted(_marked_sentences())


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_the_scan_finds_the_known_sentences() -> None:
    known = {phrases.TIMEOUT, phrases.NOT_ALLOWED, phrases.DOC_TOO_LONG, phrases.DOC_NOT_NOW}
    assert known <= set(SENTENCES)


@pytest.mark.parametrize("language", phrases.LANGUAGES)
@pytest.mark.parametrize("sentence", SENTENCES)
def test_every_sentence_is_in_every_language_with_the_same_fields(
    sentence: str, language: str
) -> None:
    text = phrases.catalogue(language).get(sentence)
    assert text is not None, f"{language}: missing translation of {sentence!r}"
    assert text.strip() and text != sentence
    assert _fields(text) == _fields(sentence)


@pytest.mark.parametrize("language", phrases.LANGUAGES)
def test_catalogues_hold_no_stale_sentences(language: str) -> None:
    assert set(phrases.catalogue(language)) <= set(SENTENCES)


def test_every_error_a_user_can_see_is_translated() -> None:
    shown = {
        cls.user_message
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BotError)
    }
    assert shown <= set(SENTENCES)


@pytest.mark.parametrize(
    ("language", "start"),
    [("de", "Das Sprachmodell"), ("pt-BR", "O modelo"), ("zh_Hans", "语言模型"), ("ar", "استغرق")],
)
def test_regional_tags_use_their_language(language: str, start: str) -> None:
    assert phrases.say(phrases.TIMEOUT, language).startswith(start)


@pytest.mark.parametrize("language", [None, "", "xx", "en", "en-GB"])
def test_unknown_or_english_gets_the_english_sentence(language: str | None) -> None:
    assert phrases.say(phrases.TIMEOUT, language) == phrases.TIMEOUT


def test_fields_are_filled_in_after_translation() -> None:
    said = phrases.say(phrases.TOO_LONG, "fr", length=9000, limit=8000)
    assert "9000" in said and "8000" in said and said.startswith("Ce message")


NOW = "Your language is now {name} ({code})."  # bot/skills/preferences.py


@pytest.mark.parametrize(
    ("language", "said"),
    [
        ("de", "Deine Sprache ist jetzt Französisch (fr)."),
        ("pt-BR", "Seu idioma agora é: Francês (fr)."),
        ("zh-TW", "你的语言现在是 法语（fr）。"),
        ("ja", "あなたの言語を フランス語（fr）に設定しました。"),
        (None, "Your language is now French (fr)."),
        ("xx", "Your language is now French (fr)."),
    ],
)
def test_a_language_s_name_is_said_in_the_sentence_s_language(
    language: str | None, said: str
) -> None:
    assert phrases.say(NOW, language, name=LanguageName("fr"), code="fr") == said


def test_a_language_name_without_a_translation_stays_english() -> None:
    assert LanguageName("zh").in_language("zh") == "中文"  # "中文; 汉语; 华语": the first
    assert LanguageName("ne").in_language("de") == "Nepali"  # "(Makrosprache)" dropped
    assert LanguageName("el").in_language("ja") == "Greek"  # ISO's name untranslated there
    assert LanguageName("tlh").in_language("de") == "tlh"  # not a language Parley knows
    assert str(LanguageName("de")) == "German"  # what prompts to the model get


def test_an_english_sentence_names_a_language_in_english() -> None:
    """A user whose language has no catalogue (Korean) got English sentences naming
    languages in Korean: "Your language is now 독일어 (de)." (a helper's review)."""
    sentence = "Your language is now {name} ({code})."
    assert phrases.say(sentence, "ko", name=LanguageName("de"), code="de") == (
        "Your language is now German (de)."
    )
    assert "Deutsch" in phrases.say(sentence, "de", name=LanguageName("de"), code="de")


def test_what_a_user_typed_is_said_back_on_one_line_without_invisible_controls() -> None:
    """Bidi overrides, isolates, zero-width and tag characters and control characters are
    dropped; the joiners emoji and Persian need stay; a long text is cut with an ellipsis."""
    typed = "\u202eelp\u2066max\u2069e\u200b\U000e0041\x1b[2J\n  👨\u200d👩 می\u200cخواهم"
    assert phrases.said_back(typed, 40) == "elpmaxe[2J 👨\u200d👩 می\u200cخواهم"
    assert phrases.said_back("x" * 50, 10) == "x" * 9 + "\u2026"


# Languages whose noun after a number takes one of several plural forms (ru: 1 символ,
# 2 символа, 5 символов; pl: 2 znaki, 5 znaków; ar: 3 أحرف, 11 حرفًا, 100 حرف).
PLURAL_FORMS = ("ru", "uk", "pl", "ar")


@pytest.mark.parametrize("language", PLURAL_FORMS)
def test_no_counted_noun_follows_a_number_in_a_language_with_plural_forms(language: str) -> None:
    """One form after every number was wrong for most ("8001 символов"): the noun comes before
    the number and a colon instead ("символов: 8001"), as DELETED says its count."""
    for english, translated in phrases.catalogue(language).items():
        assert not re.search(r"\{(?:length|chars|count)\}\s*[^\W\d_]", translated), english
    said = phrases.say(phrases.TOO_LONG, language, length=8001, limit=8000)
    assert "8001" in said and "8000" in said
