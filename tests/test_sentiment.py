"""The offline sentiment classifier (bot.sentiment.classifier) and its benchmark.

Clear cases in the six languages of the evaluation set and a few more, the rules around the
lexicon (negation, "but", capitals, "!!!", emoji, politeness in questions), the angry flag,
bad input, the lexicon files themselves, and a slice of `python -m bench.sentiment` run on
the development set through its own entry point.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import sentiment as bench
from bot.sentiment import classifier
from bot.sentiment.classifier import classify
from bot.sentiment.lexicon import LEXICON_DIR, available, load, tokenize
from bot.sentiment.types import Label

NEG, NEU, POS = Label.NEGATIVE, Label.NEUTRAL, Label.POSITIVE
LOCALES = {p.stem for p in (Path(__file__).parent.parent / "bot" / "locale").glob("*.toml")}
DEV = Path(__file__).parent.parent / "bench" / "data" / "sentiment_dev.jsonl"

CLEAR = [
    ("en", "Thank you so much, the new version works perfectly!", POS),
    ("en", "The package arrived damaged and the charger is missing.", NEG),
    ("en", "How do I change the email address on my account?", NEU),
    ("de", "Vielen Dank, das Problem ist gelöst. Super Service!", POS),
    ("de", "Die Lieferung ist kaputt angekommen, sehr enttäuschend.", NEG),
    ("de", "Wie kann ich meine Rechnungsadresse ändern?", NEU),
    ("fr", "Merci beaucoup, la livraison était rapide et parfaite.", POS),
    ("fr", "L'appareil ne fonctionne pas, je suis très déçue.", NEG),
    ("fr", "Quels sont vos horaires d'ouverture ?", NEU),
    ("es", "¡Excelente atención, muchas gracias!", POS),
    ("es", "El producto llegó roto, qué decepción.", NEG),
    ("es", "¿Puedo pagar con transferencia?", NEU),
    ("ru", "Спасибо, всё отлично работает!", POS),
    ("ru", "Товар пришёл повреждённым, очень плохо.", NEG),
    ("ru", "Как поменять пароль?", NEU),
    ("pt", "Adorei, chegou rápido e em perfeito estado.", POS),
    ("pt", "Péssimo atendimento, o produto veio quebrado.", NEG),
    ("pt", "Qual é o prazo de entrega para Lisboa?", NEU),
    ("it", "Grazie mille, servizio eccellente!", POS),
    ("nl", "Het pakket is kapot aangekomen, erg teleurgesteld.", NEG),
    ("pl", "Dziękuję, wszystko działa świetnie!", POS),
    ("uk", "Товар зламаний, дуже погано.", NEG),
    ("tr", "Çok teşekkürler, harika bir hizmet!", POS),
    ("ar", "شكرا جزيلا، الخدمة ممتازة", POS),
    ("zh", "东西坏了，非常失望。", NEG),
    ("ja", "本当にありがとうございました、助かりました！", POS),
]


@pytest.mark.parametrize(("lang", "text", "label"), CLEAR)
def test_clear_cases_in_many_languages(lang: str, text: str, label: Label) -> None:
    found = classify(text, lang)
    assert found.label is label
    assert found.source == "offline" and 0.0 <= found.score <= 1.0


@pytest.mark.parametrize(("lang", "text"), [(lang, text) for lang, text, _ in CLEAR])
def test_the_language_is_detected_when_not_given(lang: str, text: str) -> None:
    assert classify(text).label is classify(text, lang).label


@pytest.mark.parametrize(
    ("lang", "text", "label"),
    [
        ("en", "not bad", POS),
        ("en", "This is not good.", NEG),
        ("de", "nicht gut", NEG),
        ("de", "Das ist gar nicht schlecht.", POS),
        ("de", "Die App funktioniert seit dem Update nicht mehr.", NEG),
        ("fr", "Ce n'est pas bon du tout.", NEG),
        ("es", "No estoy contento con el pedido.", NEG),
        ("ru", "Не плохо, спасибо.", POS),
        ("pt", "Não gostei do produto.", NEG),
    ],
)
def test_negation_turns_the_word_around(lang: str, text: str, label: Label) -> None:
    assert classify(text, lang).label is label


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("en", "The headphones stopped pairing after the update."),
        ("de", "Nach dem Update verbinden sich die Kopfhörer nicht mehr."),
        ("fr", "Le colis n'est toujours pas arrivé."),
        ("es", "El cargador no carga."),
        ("ru", "Мне так никто и не перезвонил."),
        ("pt", "O pedido não chegou."),
    ],
)
def test_what_should_happen_and_did_not_is_negative(lang: str, text: str) -> None:
    assert classify(text, lang).label is NEG
    # The same verbs without a negation say nothing either way.
    assert classify("When will the parcel arrive?", "en").label is NEU


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("en", "The quality leaves a lot to be desired."),
        ("es", "La calidad deja mucho que desear."),
        ("pt", "As instruções não fazem o menor sentido."),
    ],
)
def test_idioms_are_not_turned_around_by_their_own_negation(lang: str, text: str) -> None:
    assert classify(text, lang).label is NEG


def test_the_clause_after_but_decides() -> None:
    assert classify("The design is nice but the battery is terrible.", "en").label is NEG
    assert classify("Die Lieferung war langsam, aber der Service war großartig.", "de").label is POS


def test_capitals_exclamations_and_emoji_strengthen() -> None:
    calm, loud = classify("The app is bad.", "en"), classify("The app is BAD!!!", "en")
    assert calm.label is loud.label is NEG and loud.score > calm.score
    assert classify("Order received 👍", "en").label is POS
    assert classify("Still waiting 😡", "en").angry


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("en", "This is the third time I'm asking. Unacceptable!"),
        ("en", "WHY IS MY ORDER STILL NOT HERE"),
        ("en", "I want a refund now."),
        ("de", "Immer noch nicht geliefert, das ist lächerlich!"),
        ("fr", "Toujours pas de réponse, c'est inadmissible !"),
        ("es", "Estoy harto, sigo sin mi reembolso."),
        ("ru", "Сколько можно ждать?! Верните деньги!"),
        ("pt", "Já é a terceira vez que peço, isso é um absurdo!"),
    ],
)
def test_anger_and_frustration_are_flagged(lang: str, text: str) -> None:
    found = classify(text, lang)
    assert found.angry and found.label is NEG


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("en", "Can I get my money back if the shoes don't fit?"),
        ("en", "How long is the delay for deliveries to Canada? Thanks!"),
        ("en", "tell me a joke"),
        ("en", "I'm not angry, just confused about the invoice."),
        ("de", "Gibt es ein Problem mit der Zahlung per PayPal?"),
        ("fr", "Merci encore une fois, bonne journée."),
        ("es", "Buenas tardes, ¿tienen la talla 40?"),
        ("pt", "Quanto tempo demora a entrega?"),
        ("ru", "Подскажите, пожалуйста, как оформить возврат?"),
    ],
)
def test_questions_and_everyday_messages_are_not_angry(lang: str, text: str) -> None:
    found = classify(text, lang)
    assert not found.angry
    assert found.label is not NEG


@pytest.mark.parametrize(
    "text", ["", "   \n\t", "\x00\x00\x00", "12345 678", "https://example.com/order/42", "?!"]
)
def test_empty_and_contentless_input_is_neutral(text: str) -> None:
    found = classify(text)
    assert found.label is NEU and not found.angry


def test_nul_bytes_and_unknown_languages_do_not_break_it() -> None:
    assert classify("great\x00 service\x00", "en").label is POS
    assert classify("terrible service", "xx").label is NEG  # no lexicon: English and emoji
    assert classify("ótimo atendimento", "pt-BR").label is POS  # a tag: its language


def test_huge_input_is_read_in_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a 5 MB paste's start and end are read (its time is bench.sentiment's target):
    every word the classifier reads goes through the tokenizer, which sees a few thousand
    characters of it, and the paste keeps its label."""
    read: list[int] = []

    def counting(text: str, *, casefold: bool = True) -> list[str]:
        read.append(len(text))
        return tokenize(text, casefold=casefold)

    monkeypatch.setattr(classifier, "tokenize", counting)
    found = classify(bench.PASTE, "en")
    assert len(bench.PASTE) == 5_200_000 and read and max(read) <= 2_001
    assert found.label is NEG


def test_every_locale_has_a_lexicon_that_loads() -> None:
    assert available() >= LOCALES and "en" in available()
    for code in available():
        lexicon = load(code)
        assert lexicon.exact or lexicon.ordered, code
    assert (LEXICON_DIR / "common.toml").stem not in available()


def test_the_bench_prints_its_metrics_on_a_slice_of_the_dev_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = bench.main(["--data", str(DEV), "--limit", "30"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("macro-F1 ")
    assert float(lines[-1].split()[1]) >= bench.TARGET
    # The times are printed beside their targets; the verdict follows them (not asserted
    # here: a loaded machine may miss them, and tests do not time).
    times = [re.fullmatch(r"time .* ([\d.]+) ms \(target <= ([\d.]+) ms\)", line) for line in lines
             if line.startswith("time ")]  # fmt: skip
    met = [float(t[1]) <= float(t[2]) for t in times if t is not None]
    assert len(met) == 2 and status == (0 if all(met) else 1)
    assert any(line.startswith("accuracy en ") for line in lines)
    assert any(line.startswith("angry     precision") for line in lines)


def test_the_bench_refuses_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "lang": "en", "text": "hi", "label": "happy"}\n')
    assert bench.main(["--data", str(bad)]) == 1
    assert "label must be one of" in capsys.readouterr().err
    assert bench.main(["--data", str(tmp_path / "missing.jsonl")]) == 1
