"""Regular expressions for the parts of a chat message that are not prose.

Shared by `protect` (which keeps these spans out of a translation) and `language` (which keeps
them out of language detection, where a URL or a code block would only add noise).
"""

from __future__ import annotations

import re

# A fence of three or more backticks or tildes, closed by the same fence on its own line; an
# unclosed fence runs to the end of the text, as Markdown renders it.
FENCED_CODE = re.compile(
    # A backtick fence's info string has no backticks (CommonMark), so "```x```" on one line
    # stays inline code instead of opening a block that swallows the rest of the message.
    r"^[ \t]*(?P<fence>`{3,}(?=[^`\n]*$)|~{3,})[^\n]*"
    r"(?:\n(?:.*?\n)??[ \t]*(?P=fence)[ \t]*$|(?:\n.*)?\Z)",
    re.M | re.S,
)
# Inline code: a run of backticks closed by a run of the same length, on one paragraph, within
# INLINE_CODE_CHARS: each run with no closer searched its whole paragraph, and a paste of runs
# of every length (one paragraph of "`a``a```a...") took seconds per search.
INLINE_CODE_CHARS = 2000
INLINE_CODE = re.compile(
    rf"(?<!`)(?P<ticks>`+)(?!`)(?:(?!\n\s*\n).){{1,{INLINE_CODE_CHARS}}}?(?<!`)(?P=ticks)(?!`)",
    re.S,
)
# A comment holds no "<!--" (HTML does not nest them): without that bound every "<!--" of an
# unclosed run searched the rest of the text for "-->" (minutes for a long paste).
HTML_TAG = re.compile(r"<!--(?:(?!<!--).)*?-->|</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>", re.S)
HTML_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
# Only the target of `[text](target "title")`: the link text is prose and gets translated.
MARKDOWN_LINK_TARGET = re.compile(r"(?<=\]\()(?:<[^<>\n]*>|[^()\s]+)(?:\s+\"[^\"\n]*\")?(?=\))")
# A reference definition line, `[label]: https://example.com "Title"`, is all target.
MARKDOWN_LINK_DEFINITION = re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*\S+.*$", re.M)
# Chinese and Japanese glue a URL, an e-mail or a mention to the words around it
# ("请访问https://example.org/docs了解详情"), and their letters are word characters to `\b` and
# `\w`: only an ASCII letter, digit or underscore before one makes it part of a longer word.
_NOT_AFTER_ASCII_WORD = r"(?<![A-Za-z0-9_])"
# CJK punctuation (ideographic, full-width and small forms) always ends a URL. CJK letters
# (Han, kana, Hangul, full-width Latin) are part of one only where a host, path, query or
# fragment part begins with them ("https://例子.测试", "https://ja.wikipedia.org/wiki/東京",
# "?q=ｆｕｌｌ") and while they go on; glued after an ASCII character ("…/docs了解详情") they are
# the sentence the URL was written into, and end it.
_CJK_PUNCTUATION = (
    "\u3000-\u303f\ufe30-\ufe4f\ufe50-\ufe6f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
)
_CJK_LETTER = (
    "\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
    "\uff66-\uffef\U00020000-\U0003134f"
)
_CJK = _CJK_PUNCTUATION + _CJK_LETTER
# Trailing sentence punctuation is not part of a URL ("see https://x.org/a." ends at "a").
# A scheme is at most 32 characters and an e-mail's local part at most 64 (RFC 5321): unbounded,
# each word of a text like "a.a.a.a..." began a search to its end (minutes for a long paste).
_URL_START = rf"{_NOT_AFTER_ASCII_WORD}(?:[a-z][a-z0-9+.-]{{0,31}}://|www\.)"
# One character each (no nested repetition: linear on any text): an ASCII or other non-CJK
# character, or a CJK letter that begins a part (after "://", ".", "/", "=", "?", "&", "#")
# or goes on from one.
_CJK_IN_URL = rf"(?<=[/.=?&#{_CJK_LETTER}])[{_CJK_LETTER}]"
_URL_CHAR = rf"(?:[^\s<>\"'`{_CJK}]|{_CJK_IN_URL})"
URL = re.compile(
    # The first branch keeps a balanced final "(...)", as in Wikipedia addresses.
    rf"{_URL_START}{_URL_CHAR}*\([^\s(){_CJK}]*\)"
    rf"|{_URL_START}{_URL_CHAR}*(?:[^\s<>\"'`.,;:!?)\]}}{_CJK}]|{_CJK_IN_URL})",
    re.I,
)
EMAIL = re.compile(
    rf"{_NOT_AFTER_ASCII_WORD}(?=[A-Za-z0-9_])[A-Za-z0-9._%+-]{{1,64}}"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9_])"
)
# @name as most platforms write it, plus Discord's <@123>, <@!123>, <@&123>, <#123> and
# custom emoji <:name:123> / <a:name:123>, which adapters may leave in the text.
MENTION = re.compile(
    r"(?<![A-Za-z0-9_@.])@[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
    r"|<(?:@[!&]?|#)[0-9]+>|<a?:[A-Za-z0-9_]+:[0-9]+>"
)
HASHTAG = re.compile(r"(?<![\w#&/])#\w+")


def glossary_pattern(terms: list[str] | tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation of the terms as case-sensitive whole words, longest first.

    Longest first so that "Parley Cloud" wins over "Parley" where both are listed.
    """
    cleaned = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    if not cleaned:
        return None
    alternation = "|".join(re.escape(t) for t in cleaned)
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)")


NOT_PROSE: tuple[re.Pattern[str], ...] = (
    FENCED_CODE,
    INLINE_CODE,
    HTML_TAG,
    HTML_ENTITY,
    MARKDOWN_LINK_DEFINITION,
    MARKDOWN_LINK_TARGET,
    URL,
    EMAIL,
    MENTION,
    HASHTAG,
)


def strip_non_prose(text: str) -> str:
    """The text with code, markup, URLs, mentions and hashtags blanked out."""
    for pattern in NOT_PROSE:
        text = pattern.sub(" ", text)
    return text
