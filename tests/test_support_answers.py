"""What the support API reads from an answer's text: its sources (the QA skill's list under
"Sources:", in any language Parley speaks) and whether it is one of the core's notices."""

from __future__ import annotations

from adapters.support.answers import notice_texts, sources
from bot import phrases
from bot.knowledge.types import Passage
from bot.skills.qa import NO_MODEL_QUOTE, SOURCES, quoted
from bot.skills.qa import sources as qa_sources


def test_the_qa_skills_sources_are_read_back_in_any_language() -> None:
    passages = [
        Passage("...", "Shipping", "Shipping > Returns", "/kb/shipping.md", 1.0),
        Passage("...", "FAQ", "see https://shop.example/faq", "/kb/faq.md", 0.5),
    ]
    for language in ("", "de", "ar"):
        answer = "You can return it.\n\n" + qa_sources(passages, phrases.say(SOURCES, language))
        assert sources(answer) == [
            {"title": "Shipping > Returns", "url": None},
            {"title": "FAQ, see https://shop.example/faq", "url": "https://shop.example/faq"},
        ]


def test_a_citation_shaped_like_a_link_is_not_one() -> None:
    """The reply is Markdown: a title written as a link gets a space before its address, so
    no client renders a link with a hidden address; no escapes show in plain text."""
    title = "[Beta] Reset [your password](https://example.net/reset)"
    passages = [Passage("...", title, "Setup", "/kb/setup.md", 1.0)]
    answer = "Do it.\n\n" + qa_sources(passages, phrases.say(SOURCES, ""))
    shown = "[Beta] Reset [your password] (https://example.net/reset), Setup"
    assert sources(answer) == [{"title": shown, "url": "https://example.net/reset"}]


def test_an_answer_without_a_source_list_has_none() -> None:
    assert sources("Just an answer.\n[1] looks like a citation but has no heading") == []
    assert sources("") == []


def test_the_cores_notices_are_known_in_every_language() -> None:
    texts = notice_texts()
    assert phrases.say(phrases.RATE_LIMITED, "fr") in texts
    assert phrases.RATE_LIMITED in texts
    assert "Hello! How can I help?" not in texts


def test_the_passages_quoted_without_a_model_are_the_sources() -> None:
    """/ask without a model quotes the passages under their citations: the answer event's
    `sources` lists them (it was [] although the text cited two)."""
    passages = [
        Passage("Returns within 30 days.", "Refunds", "", "refunds.md", 1.0),
        Passage("See https://example.net/ship for rates.", "Shipping", "", "ship.md", 0.5),
    ]
    for language in ("", *phrases.LANGUAGES):
        answer = quoted(passages, phrases.say(NO_MODEL_QUOTE, language))
        assert [s["title"] for s in sources(answer)] == ["Refunds", "Shipping"], language
    assert sources("Not the heading\n\n[1] Refunds\nReturns within 30 days.") == []
