"""/translate [to LANG] text, or in reply to a message; and the per-chat auto-translate.

The source language is detected offline; the target is the one named, else the user's /lang,
else the language the platform reports for the user, else skills.default_language. Code,
URLs, @mentions, emoji, markup and glossary terms are swapped for placeholders before the
model sees the text and put back after (bot.text.protect), so they survive unchanged; a
placeholder the model dropped is appended rather than lost. Without a model there is no
translation, and the reply says so in one sentence.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from bot.phrases import N_
from bot.text import (
    LanguageName,
    Protected,
    detect_language,
    language_name,
    protect,
    restore,
    split_for_budget,
)
from bot.text.protect import placeholder
from bot.text.quoting import split_fenced, unfenced

from .preferences import language_code, unknown_language
from .router import Command, CommandRouter, Intent, Say, TurnContext, say_in_english
from .services import TEMPLATE_MARGIN_TOKENS, SkillServices, stream_text

NEEDS_MODEL = N_("Translation needs a language model, and none is configured here.")
USAGE = N_(
    "Usage: /translate [to LANG] text, or reply to a message with /translate [to LANG]; "
    "for example /translate to German Good morning!"
)
ALREADY = N_("That text is already in {name}.")
_TARGET = re.compile(r"^(to|into|in)\s+(.*)$", re.I | re.S)
# The words of a language's name ("Brazilian Portuguese", "tiếng Việt"), at most this many.
_NAME_WORDS = 3
_WORD = r"[^\s:：,，、]+"
# A language's name is on one line: "to German\n\n```" (a document's caption, then its fence:
# bot.conversation.intake) names German, not "German ```" (which the language lookup read as
# German, leaving the fence's closing line in the text to translate).
_BETWEEN_WORDS = r"[^\S\n]+"
_SEPARATOR = re.compile(r"\s*[:：,，、]\s*")
# Words that begin an English sentence after "to" or "in" and are also language codes ("to be
# or not to be", "in my opinion", "to it"): a target only when a separator follows ("to it:
# Ciao") or nothing does (in reply to a message); else the whole text is translated.
_ENGLISH_WORDS = frozenset(
    {"a", "am", "an", "as", "be", "do", "he", "hi", "id", "is", "it", "la", "my", "no", "or"}
    | {"so", "to", "ha"}
)
_PLAIN = re.compile(r"^\s*(?:please\s+)?translate\b(?:\s+(?:this|that|it))?\s*(.*)$", re.I | re.S)
# The opening of a placeholder at the end of a part: "⟦", "⟦1", "⟦13".
_CUT_PLACEHOLDER = re.compile(r"⟦\d*$")
# A placeholder may arrive split over deltas: text after an opening bracket waits for the rest.
_OPEN = ("⟦", "〚")


def register(router: CommandRouter, services: SkillServices) -> None:
    skill = TranslateSkill(services)
    router.add(Command("translate", N_("translate text or a replied-to message: "
                       "/translate [to LANG] text"), skill.translate,
                       max_chars=services.settings.max_paste_chars))  # fmt: skip
    router.add_intent(Intent("translate", "translate a text into another language",
                             skill.translate, match_translate))  # fmt: skip


def match_translate(text: str) -> str | None:
    found = _PLAIN.match(text)
    return found.group(1).strip() if found else None


def parse_target(args: str) -> tuple[str | None, str]:
    """(the target language as typed after "to", "into" or "in", or None; the text).

    The longest run of up to three words that names a language is the target ("to Brazilian
    Portuguese Good morning", "to 中文：早上好"). A word after "to" or "into" that names
    none is a language the user meant, refused by name ("to Klingon hi"); after "in", only
    before a separator ("In Paris it rains" is translated whole)."""
    args = args.strip()
    found = _TARGET.match(args)
    if found is None:
        return None, args
    preposition, rest = found.group(1).lower(), found.group(2)
    for count in range(_NAME_WORDS, 0, -1):
        words = re.match(rf"{_WORD}(?:{_BETWEEN_WORDS}{_WORD}){{{count - 1}}}", rest)
        if words is None:
            continue
        typed, after = words.group(0), rest[words.end() :]
        separator = _SEPARATOR.match(after)
        text = (after[separator.end() :] if separator else after).strip()
        if language_code(typed) is None:
            if count == 1 and (separator is not None or preposition != "in"):
                return typed, text
            continue
        if count == 1 and separator is None and text and typed.lower() in _ENGLISH_WORDS:
            return None, args
        return typed, text
    return None, args


class TranslateSkill:
    def __init__(self, services: SkillServices) -> None:
        self._s = services

    async def translate(self, ctx: TurnContext) -> str | AsyncIterator[str]:
        typed, text = parse_target(ctx.args)
        named = language_code(typed) if typed is not None else None
        if typed is not None and named is None:
            return await unknown_language(ctx, typed)
        prefs = await self._s.turn(ctx)
        text = without_fence(text) or (prefs.reply_to_text or "")
        if not text:
            return await ctx.say(USAGE)
        # Else the language the platform reports for the user (Discord's locale, Telegram's
        # app language), where it names one translation can target.
        reported = language_code(prefs.platform_language) if prefs.platform_language else None
        target = named or prefs.language or reported or self._s.settings.default_language
        return await self.into(text, target, str(ctx.key), ctx.say)

    async def into(
        self, text: str, target: str, session: str, say: Say
    ) -> str | AsyncIterator[str]:
        source = detect_language(text)
        if source is not None and source.code == target:
            return await say(ALREADY, name=LanguageName(target))
        if self._s.backend is None:
            return await say(NEEDS_MODEL)
        return self._stream(text, source.name if source else "its language", target, session)

    async def _stream(
        self, text: str, source: str, target: str, session: str
    ) -> AsyncIterator[str]:
        """The translation, streamed. A text too long for one request beside its translation
        (up to twice its tokens) is cut at paragraphs and sentences into parts that fit, each
        translated in turn; a pasted email of 20,000 characters was refused as a conversation
        too long for the model."""
        assert self._s.backend is not None
        protected = protect(text, self._s.settings.glossary)
        system = self._s.prompts.render(
            "translate",
            source=source,
            target=language_name(target),
            glossary=self._s.settings.glossary,
        )
        for i, part in enumerate(await self._parts(system, protected.text)):
            if i:
                yield "\n\n"
            tokens = max(self._s.generation.max_tokens, await self._s.count_tokens(part) * 2)
            tokens = min(tokens, max(16, self._s.max_model_len() // 2))
            # The whole user message is the text: a fence would come back in the translation.
            request = self._s.request(
                system, part, max_tokens=tokens, session_id=session, fence=False
            )
            deltas = stream_text(self._s.backend, request, mark_cut=True)
            async for piece in restored_stream(deltas, protected, given=part):
                yield piece

    async def _parts(self, system: str, text: str) -> list[str]:
        """`text` whole when it fits one request beside its translation, else in parts that
        each do (a third of what the prompt leaves: the part and twice it for the answer)."""
        context = self._s.max_model_len()
        if context <= 0:
            return [text]
        prompt, size = await self._s.count_many([system, text])
        room = context - prompt - TEMPLATE_MARGIN_TOKENS
        if size * 3 <= room or room < 3:
            return [text]
        parts = await split_for_budget(
            text, room // 3, self._s.count_tokens, count_many=self._s.count_many
        )
        return whole_placeholders(parts)


def without_fence(text: str) -> str:
    """`text` with the fence lines of a document's block taken off (a document's message is
    its caption, a blank line and its text fenced: bot.conversation.intake), what came before
    the block kept (words of the caption after the target, "please"): the fence lines would
    come back in the translation, and the document, taken for a code block, untranslated."""
    document = split_fenced(text)
    if document is None:
        return text
    before, block = document
    return f"{before}\n\n{unfenced(block)}" if before else unfenced(block)


def whole_placeholders(parts: list[str]) -> list[str]:
    """`parts` with no placeholder cut in two: a text without spaces (Chinese, Japanese) is
    cut between any two characters, and a link's "⟦13" and "6⟧" in two parts were lost (a
    review). The cut-off opening moves to the next part."""
    whole = list(parts)
    for i in range(len(whole) - 1):
        cut = _CUT_PLACEHOLDER.search(whole[i])
        if cut is not None:
            whole[i], whole[i + 1] = whole[i][: cut.start()], cut.group(0) + whole[i + 1]
    return [part for part in whole if part]


async def restored_stream(
    deltas: AsyncIterator[str], protected: Protected, *, given: str | None = None
) -> AsyncIterator[str]:
    """The model's deltas with the placeholders swapped back, streamed; dropped spans last
    (of those in `given`, the part of the text the model was given; all when None).

    The current line is restored whole as it grows, and only what is new is sent: a span is
    put back by the characters beside its placeholder (a code block the model joined into a
    sentence is given a line of its own), and those may come in another delta. No rule looks
    across a line break, so a finished line is never restored again."""
    raw, sent, line, shown = "", 0, 0, ""
    async for delta in deltas:
        raw += delta
        safe = _safe_end(raw)
        if safe > sent:
            restored = restore(raw[line:safe], protected).text
            if len(restored) > len(shown):
                yield restored[len(shown) :]
            sent, shown = safe, restored
            newline = raw.rfind("\n", line, safe)
            if newline != -1:
                line = newline + 1
                shown = restore(raw[line:safe], protected).text
    if len(raw) > sent:
        restored = restore(raw[line:], protected).text
        if len(restored) > len(shown):
            yield restored[len(shown) :]
    missing = [
        span
        for span in restore(raw, protected).missing
        if given is None or placeholder(span.index) in given
    ]
    if missing:
        yield "\n" + "\n".join(span.text for span in missing)


def _safe_end(raw: str) -> int:
    """Where the text can be cut without splitting a placeholder (or the space after it)."""
    opened = max(raw.rfind(o) for o in _OPEN)
    if opened != -1 and raw.find("⟧", opened) == -1 and raw.find("〛", opened) == -1:
        raw = raw[:opened]
    # Hold back trailing whitespace: restore() may remove it when a placeholder follows.
    return len(raw.rstrip())


async def auto_translate(
    skill: TranslateSkill, text: str, target: str, session: str, say: Say = say_in_english
) -> str | AsyncIterator[str] | None:
    """A chat's auto-translate: the translation of a message in another language, or None
    for one already in the target language (or too short to tell), which is answered as usual.
    `say` is the turn's ctx.say (for NEEDS_MODEL in the sender's language)."""
    text = without_fence(text)
    source = detect_language(text)
    if source is None or source.code == target:
        return None
    return await skill.into(text, target, session, say)
