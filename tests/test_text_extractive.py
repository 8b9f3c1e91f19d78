"""Extractive summaries and the sentence splitter they stand on."""

from __future__ import annotations

import pytest

from bot.text.extractive import features, rank_sentences, summarize_extractive, top_sentences
from bot.text.sentences import LONG_SENTENCE, MAX_PIECE, split_sentences

BUDGET_NEWS = (
    "The city council approved the new budget for public transport on Monday. "
    "My neighbour painted his fence green last week. "
    "The transport budget gives more money to buses and trams across the city. "
    "Our cat prefers to sleep on the warm windowsill. "
    "The council expects the larger transport budget to cut waiting times for buses and trams. "
    "Pizza with pineapple remains a controversial topic. "
    "Critics say the budget for buses and trams is still too small for a growing city."
)
CENTRAL = [
    "The city council approved the new budget for public transport on Monday.",
    "The transport budget gives more money to buses and trams across the city.",
    "The council expects the larger transport budget to cut waiting times for buses and trams.",
    "Critics say the budget for buses and trams is still too small for a growing city.",
]


def test_picks_the_central_sentences_in_original_order() -> None:
    assert top_sentences(BUDGET_NEWS, 4) == CENTRAL


def test_bullets_and_paragraph_forms() -> None:
    bullets = summarize_extractive(BUDGET_NEWS, max_sentences=2, form="bullets")
    lines = bullets.splitlines()
    assert len(lines) == 2 and all(line.startswith("- ") for line in lines)
    paragraph = summarize_extractive(BUDGET_NEWS, max_sentences=2, form="paragraph")
    assert "\n" not in paragraph and paragraph.count(". ") == 1


def test_off_topic_sentences_rank_lowest() -> None:
    sentences = split_sentences(BUDGET_NEWS)
    scores = rank_sentences(sentences)
    assert abs(sum(scores) - 1.0) < 1e-6
    worst = sorted(range(len(sentences)), key=lambda i: scores[i])[:3]
    assert {sentences[i].split()[0] for i in worst} == {"My", "Our", "Pizza"}


def test_chinese_text() -> None:
    text = (
        "市政府今天批准了新的公共交通预算。我的猫喜欢在窗台上睡觉。"
        "新的交通预算将增加公交车和地铁的投入。披萨上放菠萝一直有争议。"
        "市政府希望交通预算能减少公交车和地铁的等车时间。"
    )
    summary = summarize_extractive(text, max_sentences=2, form="paragraph")
    assert summary == (
        "新的交通预算将增加公交车和地铁的投入。市政府希望交通预算能减少公交车和地铁的等车时间。"
    )


def test_arabic_text() -> None:
    text = (
        "وافق مجلس المدينة على ميزانية النقل العام الجديدة. "
        "قطتي تحب النوم طوال اليوم. "
        "تمنح ميزانية النقل الجديدة المزيد من المال للحافلات في المدينة. "
        "هل تحب البيتزا بالأناناس؟ "
        "يتوقع مجلس المدينة أن تقلل ميزانية النقل وقت انتظار الحافلات."
    )
    chosen = top_sentences(text, 2)
    assert len(chosen) == 2
    assert all("ميزانية النقل" in s for s in chosen)
    assert text.index(chosen[0]) < text.index(chosen[1])


def test_short_text_is_returned_whole_and_code_is_never_chosen() -> None:
    text = "We fixed the login bug.\n\n```python\nlogin(user)\n```\n\nThe release is on Friday."
    assert top_sentences(text, 5) == ["We fixed the login bug.", "The release is on Friday."]


def test_repeated_chat_lines_are_counted_once() -> None:
    assert top_sentences("Thanks!\nthanks!\n\nThanks!", 5) == ["Thanks!"]


def test_max_sentences_must_be_positive() -> None:
    with pytest.raises(ValueError):
        summarize_extractive(BUDGET_NEWS, max_sentences=0)


def test_cjk_features_are_character_pairs() -> None:
    assert set(features("交通预算")) == {"交通", "通预", "预算"}
    assert set(features("Budget 预算 ok")) == {"budget", "预算", "ok"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "It costs 3.14 dollars, e.g. the small one. Dr. Smith agreed! Did he? Yes.",
            ["It costs 3.14 dollars, e.g. the small one.", "Dr. Smith agreed!", "Did he?", "Yes."],
        ),
        ("Wait... what? I see… Fine.", ["Wait... what?", "I see…", "Fine."]),
        ("We met J. Smith in the U.S. today.", ["We met J. Smith in the U.S. today."]),
        ("Das ist z.B. gut. Ende.", ["Das ist z.B. gut.", "Ende."]),
        ("今天很好。我们去吧！真的？好", ["今天很好。", "我们去吧！", "真的？", "好"]),
        ("كيف حالك؟ أنا بخير.", ["كيف حالك؟", "أنا بخير."]),
        ("यह पहला है। यह दूसरा है।", ["यह पहला है।", "यह दूसरा है।"]),
        ("Plan:\n- first step\n- second step", ["Plan:", "- first step", "- second step"]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        # A writer who does not capitalise still ends sentences; abbreviations stay whole.
        (
            "this is the first point. this is another point. yet another point here.",
            ["this is the first point.", "this is another point.", "yet another point here."],
        ),
        (
            "it costs approx. ten euros. e.g. the small one. ok",
            ["it costs approx. ten euros.", "e.g. the small one.", "ok"],
        ),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_a_paste_of_lower_case_sentences_is_not_one_sentence() -> None:
    """A paste that starts with a capital but goes on in lower case was one 290,000-character
    "sentence", and the summary without a model was the whole paste as one bullet."""
    paste = "Notes from the call. " + "we agreed to ship on friday. " * 100
    sentences = split_sentences(paste)
    assert len(sentences) == 101 and max(map(len, sentences)) < 40
    summary = summarize_extractive(paste, max_sentences=3)
    assert len(summary) < 200


@pytest.mark.timeout(60)  # before the fix: about half an hour (quadratic), so a hang, not a timing
@pytest.mark.parametrize("marks", [".", "!", "?!", "…"])
def test_a_paste_of_one_long_run_of_marks_is_split_in_one_pass(marks: str) -> None:
    """A run of marks with no space after it was matched from each of its marks, each match
    scanning to the run's end: `/summarize x....x` (20,000 dots) held the event loop for
    5 s, and a document of dots for minutes (a helper's review). The longest paste now."""
    run = marks * (400_000 // len(marks))
    pieces = split_sentences(f"x{run}x")  # no space to cut at: cut at the bound
    assert "".join(pieces) == f"x{run}x" and max(map(len, pieces)) <= MAX_PIECE
    *wait, last = split_sentences(f"Wait{run} Next one.")
    assert "".join(wait) == f"Wait{run}" and last == "Next one."


THAI = "วันนี้อากาศดีมาก เราไปเดินเล่นที่สวนสาธารณะ ตอนเย็นเรากินข้าวที่ร้านอาหารไทย "
TRANSCRIPT = "the deploy failed because the cache was cold and the workers restarted "


@pytest.mark.parametrize("text", [THAI * 60, TRANSCRIPT * 150, "这是一个没有标点的句子" * 400])
def test_an_unpunctuated_text_is_summarized_shorter_than_itself(text: str) -> None:
    """Thai puts a space, not a mark, between sentences, and a transcript may have no
    punctuation: the whole text was one sentence, and the summary without a model was the
    whole text (4,631 characters of Thai gave 4,621)."""
    pieces = split_sentences(text)
    assert max(map(len, pieces)) <= MAX_PIECE
    assert "".join("".join(pieces).split()) == "".join(text.split())  # nothing lost
    assert len(summarize_extractive(text, max_sentences=5)) < len(text) // 2


def test_a_long_unpunctuated_piece_is_cut_after_a_clause_mark_or_a_space() -> None:
    clauses = "first we checked the cache, then the workers, and then the logs " * 40
    pieces = split_sentences(clauses)
    assert len(pieces) > 1 and all(p.endswith(",") for p in pieces[:-1])
    spaced = split_sentences(THAI * 20)
    assert len(spaced) > 1 and all(p.endswith(("ไทย", "สาธารณะ", "มาก")) for p in spaced)


def test_a_long_punctuated_sentence_stays_whole() -> None:
    long = "The report, which " + "covers the budget and the plans, " * 20 + "is late."
    assert MAX_PIECE < len(long) < LONG_SENTENCE
    assert split_sentences(f"{long} It was due today.") == [long, "It was due today."]
