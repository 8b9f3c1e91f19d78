"""The sentences Parley itself says to users (errors, notices, command replies, /help), in the
languages it speaks.

gettext's model: the English sentence in the code is the key, marked with `N_()` so that a
test finds every one (tests/test_phrases.py fails when a marked sentence lacks a language or
changes its fields); the translations are catalogues, one TOML file per language in
bot/locale/, that a translator edits without touching code. `{fields}` in a sentence are
filled in after the lookup, so numbers and names stay out of the catalogues.

    say(BackendTimeout.user_message, "de")
    say(TOO_LONG, "pt-BR", length=9000, limit=8000)

Which language a user gets is decided by the caller: their /lang, else what the platform
reports for them, else their message's detected language, else the operator's default.
"""

from __future__ import annotations

import functools
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

# Every marked sentence has every one of these (tests/test_phrases.py checks it).
LANGUAGES = ("de", "fr", "es", "it", "pt", "nl", "pl", "ru", "uk", "tr", "ar", "zh", "ja")
LOCALE_DIR = Path(__file__).resolve().parent / "locale"


def N_(sentence: str) -> str:  # gettext's name: mark now, translate at say()
    """Marks `sentence` as said to users: it must be in every catalogue."""
    return sentence


GENERIC = N_("Something went wrong on my side. Please try again in a moment.")
UNAVAILABLE = N_("The language model is not answering right now. Please try again shortly.")
NO_MODEL = N_("I can only run commands here for now (try /help).")
# NO_MODEL for the operator at their own console (OperatorFacing): how to set a model. Users
# elsewhere never see the bot's settings or paths.
NO_MODEL_SETUP = N_(
    "No language model is configured, so I can only run commands (try /help). "
    "The operator can set one with PARLEY_BACKEND__KIND=vllm or openai (see docs/backends.md)."
)
TIMEOUT = N_("The language model took too long to answer. Please try again.")
CONTEXT_TOO_LONG = N_("This conversation is too long for the model. Send /reset to start afresh.")
UNHANDLED_INPUT = N_("I could not handle that message.")
RATE_LIMITED = N_(
    "You are sending messages too quickly, so I skipped this one. "
    "Please wait a minute and send it again."
)
TOO_LONG = N_(
    "That message is too long ({length} characters; the limit is {limit}). "
    "Please send a shorter one."
)
CUT_OFF = N_("[The reply was cut off.]")
# After an answer that ran into its token limit (most often mid-word): not a sentence, the
# same in every language.
TRUNCATED = "…"
# A model that ended its answer with no text at all (or only blanks): else the user would
# see nothing, typing and then silence.
EMPTY_ANSWER = N_(
    "The language model gave an empty answer. Please ask again, perhaps in other words."
)
STOPPED = N_("[Stopped.]")
NOT_ALLOWED = N_("Sorry, this bot is private and I can't talk with you here.")
ADMINS_ONLY = N_("Only an admin of this group can change that.")
NO_DOWNLOAD = N_("I could not download that document. Please try again.")
DOC_UNSUPPORTED = N_("I can read plain text, Markdown, HTML and PDF documents, but not this one.")
DOC_TOO_LARGE = N_("That document is too large for me: I read documents up to {kb} kB.")
DOC_EMPTY = N_("I found no text in that document.")
DOC_DAMAGED = N_("That document looks damaged; I could not read it.")
# Refused for now (DocumentRefusedForNow): on a busy machine the same file may be read in
# time later; a file that is slow to read however often it comes needs cutting.
DOC_TOO_SLOW = N_(
    "That document took too long to read, so I stopped. "
    "Please send it again in a moment, or send a shorter one."
)
DOC_TOO_MUCH_MEMORY = N_("That document needs too much memory to read, so I stopped.")
# The reader ended for a reason that says nothing of the file (the kernel killed it, the host
# short of memory): the same file may be read a moment later.
DOC_NOT_NOW = N_("I could not read that document just now. Please send it again in a moment.")
DOC_TOO_LONG = N_(
    "That document has more text than I read at once (at most {chars} characters). "
    "Please send a shorter one."
)
DOC_TOO_MANY_PAGES = N_(
    "That PDF has more pages than I read (at most {pages}). Please send a shorter one."
)
ONE_DOCUMENT = N_(
    "I read one document per message: only {read}. Please send {skipped} separately, "
    "one per message."
)
MEDIA = N_(
    "I can read text messages and documents (plain text, Markdown, HTML or PDF up to {mb} MB), "
    "but not photos, voice messages, videos or stickers."
)
# MEDIA where only text is read (Chatwoot: a photo or a file sent alone), no documents.
TEXT_ONLY = N_("I can read only text messages here, not photos, files or other attachments.")
BUDGET_USED_UP = N_(
    "The daily token budget is used up, so I cannot answer this now. "
    "It resets at midnight ({zone})."
)
HANDING_OFF = N_(
    "I'm passing you to a person from our team. They will answer you here as soon as they can."
)
# Said when the customer asks for a person but no help desk reaches the conversation.
NO_PERSON = N_("Nobody from our team can be reached here, so I will keep helping you myself.")
TRANSLATED = N_("(translated automatically)")


# Joiners that scripts and emoji need (ZWNJ in Persian, ZWJ in emoji sequences): they direct
# nothing outside their own word.
_JOINERS = frozenset("\u200c\u200d")
# "](" or "][": where a bracket closes a link's text (inline or by reference), as in citations
# (bot.skills.qa): a space after it keeps the words and the address, and makes no link.
_LINK_JOIN = re.compile(r"\](?=[(\[])")


def said_back(typed: str, limit: int) -> str:
    """What a user wrote, to be put in one of Parley's sentences: on one line, at most `limit`
    characters, without control or invisible format characters (Unicode's Cc and Cf, joiners
    aside). A bidi override said back as typed ("\u202eelpmaxe") reversed the rest of
    Parley's sentence as displayed, and a tag or zero-width character hid what was named.
    Nor as a link: platforms render Parley's sentences as Markdown, and a member's typed
    `[Refund form](https://evil.example)`, shown as typed in their own message on Telegram,
    became the bot's link named "Refund form"."""
    visible = "".join(
        c
        for c in typed
        if c.isspace() or c in _JOINERS or unicodedata.category(c) not in ("Cc", "Cf", "Cs")
    )
    line = _LINK_JOIN.sub("] ", " ".join(visible.split()))
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def base_language(tag: str | None) -> str:
    """ "pt-BR" -> "pt", "zh_Hans" -> "zh", None -> ""."""
    if not tag:
        return ""
    return tag.replace("_", "-").split("-", 1)[0].lower()


@functools.cache
def catalogue(language: str) -> Mapping[str, str]:
    """The translations of one language (read once; empty for a language Parley lacks)."""
    if language not in LANGUAGES:
        return {}
    with (LOCALE_DIR / f"{language}.toml").open("rb") as fh:
        return tomllib.load(fh)


@runtime_checkable
class Localized(Protocol):
    """A field written in the sentence's language (bot.text.LanguageName: "Deutsch", not
    "German", in a German sentence)."""

    def in_language(self, language: str | None) -> str: ...


def say(sentence: str, language: str | None, **fields: object) -> str:
    """`sentence` in `language` (an IETF tag; unknown ones get English), fields filled in."""
    translated = catalogue(base_language(language)).get(sentence)
    text = sentence if translated is None else translated
    if not fields:
        return text
    # A field is written in the sentence's language: an English sentence (no catalogue, or
    # none for this sentence) names German "German", not "독일어".
    written_in = language if translated is not None else "en"
    named = {k: v.in_language(written_in) if isinstance(v, Localized) else v
             for k, v in fields.items()}  # fmt: skip
    return text.format(**named)
