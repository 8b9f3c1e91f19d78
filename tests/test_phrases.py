"""The sentences Parley says itself: every one in every language, with the same fields."""

from __future__ import annotations

import string

import pytest

from bot import errors, phrases

SENTENCES = sorted(phrases.CATALOG)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("sentence", SENTENCES)
def test_every_sentence_is_in_every_language_with_the_same_fields(sentence: str) -> None:
    translations = phrases.CATALOG[sentence]
    assert set(translations) == set(phrases.LANGUAGES)
    for language, text in translations.items():
        assert text.strip() and text != sentence, language
        assert _fields(text) == _fields(sentence), language


def test_every_error_a_user_can_see_is_translated() -> None:
    shown = {
        cls.user_message
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BotError)
    }
    assert shown <= set(phrases.CATALOG)


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
