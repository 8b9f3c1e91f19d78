"""Text every database Parley supports accepts, made so where text enters storage.

PostgreSQL refuses the NUL character in text columns ("invalid byte sequence for encoding
UTF8: 0x00"), and a lone UTF-16 surrogate (U+D800..U+DFFF, which a JSON body can carry as
`\\ud800`) cannot be encoded as UTF-8 at all, by any driver. Either one made a whole write fail,
again at every retry: a reply with a NUL was shown but never recorded (so re-answered at every
start), and a user message with one failed every re-delivery of its webhook.

`storable` replaces each NUL and each lone surrogate with U+FFFD, the replacement character:
the text keeps its length and shows where something was, and nothing else changes (a valid
surrogate pair never reaches Python as two code points, so only broken ones are touched).

`storable_incoming` does it to a message's own texts at the door (the manager's submit), before
anything reads them: a lone surrogate cannot be sent to a model server either (its tokenizer
request is JSON, which httpx encodes as UTF-8), so cleaning only where the text is stored came
too late.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import unicodedata

from bot.types import Incoming

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD; unchanged if it has neither."""
    return _UNSTORABLE.sub(REPLACEMENT, text)


# The longest sender's name kept (users.display_name): a platform may allow longer ones (a
# Chatwoot contact's name has no limit), and the database refused the whole message, which was
# then a 500 to every delivery of every message from that sender (a helper's review).
MAX_DISPLAY_NAME_CHARS = 255


# The longest language tag kept (users.language_code). A platform's tag may be longer (BCP 47
# allows "zh-Hant-TW-u-nu-hanidec", and Telegram's language_code is "an IETF language tag"),
# and the database refused every message of its sender.
MAX_LANGUAGE_TAG_CHARS = 16


def storable_language(tag: str) -> str:
    """A platform's language tag made `storable` and cut to MAX_LANGUAGE_TAG_CHARS at a
    subtag ("zh-Hant-TW-u-nu-hanidec" -> "zh-Hant-TW-u-nu"); "" where even its first subtag
    is longer. Only the first subtag is ever read (the language, bot.phrases.base_language)."""
    tag = storable(tag)
    if len(tag) <= MAX_LANGUAGE_TAG_CHARS:
        return tag
    end = MAX_LANGUAGE_TAG_CHARS + 1  # a separator right after the 16th character will do
    cut = max(tag.rfind("-", 0, end), tag.rfind("_", 0, end))
    return tag[:cut] if cut > 0 else ""


def storable_incoming(incoming: Incoming) -> Incoming:
    """`incoming` with its text, quoted reply and sender's name made `storable`, the name cut
    to MAX_DISPLAY_NAME_CHARS, the sender's language tag to MAX_LANGUAGE_TAG_CHARS; the same
    object where none needed it."""
    quoted = incoming.reply_to_text
    name = storable(incoming.user.display_name)[:MAX_DISPLAY_NAME_CHARS]
    language = storable_language(incoming.user.language)
    texts = (incoming.text, quoted or "")
    if (
        name == incoming.user.display_name
        and language == incoming.user.language
        and all(storable(t) == t for t in texts)
    ):
        return incoming
    user = dataclasses.replace(incoming.user, display_name=name, language=language)
    return dataclasses.replace(
        incoming,
        text=storable(incoming.text),
        reply_to_text=None if quoted is None else storable(quoted),
        user=user,
    )


def text_problem(text: str, *, lines: bool = False) -> str | None:
    """Why `text` cannot be kept as a site's setting, or None: a control character (NUL,
    which PostgreSQL refuses, and any other, which no prompt or name needs; `lines` allows tab
    and line breaks) or a lone surrogate (bytes that were not UTF-8, which no driver can
    store). Says where, never the text itself (a prompt may be confidential)."""
    for index, char in enumerate(text):
        if lines and char in "\t\n\r":
            continue
        kind = unicodedata.category(char)
        if kind not in ("Cc", "Cs"):
            continue
        line = text.count("\n", 0, index) + 1
        column = index - (text.rfind("\n", 0, index) + 1) + 1
        where = f" at line {line}, column {column}" if lines else f" at character {index + 1}"
        if kind == "Cs":
            return f"not UTF-8 text{where}"
        allowed = "; only tabs and line breaks may be in it" if lines else ""
        return f"control character U+{ord(char):04X}{where} cannot be stored{allowed}"
    return None


# The longest id of a chat or a user the database keeps (conversations.chat_id,
# users.external_id).
MAX_ID_CHARS = 255


def id_problem(value: str) -> str | None:
    """Why `value` cannot name a chat or a user (the console's `chat` and `user`), or None:
    blank, longer than the database keeps, or a character it cannot store."""
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"{len(value)} characters; at most {MAX_ID_CHARS}"
    return text_problem(value)


def id_argument(value: str) -> str:
    """An argparse `type` for `id_problem`'s values: a bad one is argparse's one line, exit
    status 2."""
    if problem := id_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def storable_argument(value: str) -> str:
    """An argparse `type`: a command-line value the database can keep as it is (bytes that
    were not UTF-8 or a control character: argparse's one line, exit status 2)."""
    if problem := text_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


# Line breaks of every kind: what must not start a line of its own in text shown as one line
# (a quoted item of a handoff note, a citation in the sources list).
LINE_BREAKS = re.compile(r"[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]+")


def one_line(text: str) -> str:
    """`text` with each run of line breaks replaced by one space."""
    return LINE_BREAKS.sub(" ", text)
