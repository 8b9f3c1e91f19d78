"""/summarize [short|long] [bullets|paragraph] [text]: a summary of pasted text, of the message
replied to, of "what I missed" in a chat that keeps its messages (`/summarize missed [N]h`),
or else of the current conversation (since the last /reset).

Written in the user's language (/lang, else the text's). Long texts go through MapReduce;
without a model the answer is an extractive summary (the most central sentences).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from bot.phrases import N_
from bot.storage.prefs import LoggedMessage
from bot.text import language_name, split_sentences, summarize_extractive
from bot.text.quoting import DOCUMENT, Said, speaker, unfenced
from bot.text.quoting import quoted as quoted_line
from bot.types import utcnow

from .mapreduce import MapReduce, SummaryStyle
from .router import Command, CommandRouter, Intent, TurnContext
from .services import SkillServices

NOTHING = N_("There is nothing to summarise yet.")
NOT_KEPT = N_(
    "This chat does not keep its messages for summaries. Send /keep on to start "
    "(then I can tell you what you missed)."
)
NOTHING_MISSED = N_("You missed nothing: there are no messages since then.")
MISSED_USAGE = N_("Usage: /summarize missed, or /summarize missed 3h for the last 3 hours.")
_HOURS = re.compile(r"^(\d+(?:\.\d+)?)\s*h(?:ours?)?$", re.I)
_HOURS_APART = re.compile(r"\b(missed\s+\d+(?:\.\d+)?)\s+(h(?:ours?)?)\b", re.I)
# What follows `missed` that was meant as hours but cannot be read ("-1h", "1e3h", "0h").
_HOURS_MEANT = re.compile(r"^-?\.?\d")
# The furthest back `/summarize missed Nh` looks: ten years (a larger N is the same).
_MAX_HOURS = 24 * 366 * 10
_MISSED = re.compile(r"^\s*(?:so\s+)?what\s+(?:did|have)\s+i\s+miss(?:ed)?\b", re.I)
# "Please summarize this document (notes.md)." is the caption of a document sent without one
# (bot.conversation.intake): its name is not the text to summarise, the document's block after
# it is. Only that caption, followed by the block: a typed "summarize this document (by Ada):
# TEXT" keeps its TEXT.
_SUMMARIZE = re.compile(
    r"^\s*(?:please\s+)?(?:summari[sz]e|sum\s+up|tl;?dr)\b(?:\s+(?:this|that|it))?"
    r"(?:\s+document\b(?:\s*\([^\n]*\)\.(?=\n\n`{3,}" + DOCUMENT + r"\n))?\.?)?"
    r"\s*[:\-]?\s*(.*)$",
    re.I | re.S,
)


@dataclass(frozen=True, slots=True)
class Options:
    length: str = "short"
    form: str = "bullets"
    missed: bool = False
    hours: float | None = None
    text: str = ""


def register(router: CommandRouter, services: SkillServices) -> None:
    skill = SummarizeSkill(services)
    router.add(Command(
        "summarize",
        N_("summarise this chat, a replied-to message or pasted text: "
           "/summarize [short|long] [bullets|paragraph] [text]; /summarize missed [N]h"),
        skill.summarize, max_chars=services.settings.max_paste_chars,
    ))  # fmt: skip
    router.add(Command("summarise", "", skill.summarize, hidden=True,
                       max_chars=services.settings.max_paste_chars))  # fmt: skip
    router.add_intent(Intent("summarize", "summarise a text, the conversation, or what the "
                             "user missed", skill.summarize, match_summarize))  # fmt: skip


def match_summarize(text: str) -> str | None:
    if _MISSED.match(text):
        return "missed"
    found = _SUMMARIZE.match(text)
    return found.group(1).strip() if found else None


def parse_options(args: str) -> Options:
    """Leading option words in any order; everything after them is the text."""
    args = _HOURS_APART.sub(r"\1\2", args, count=1)  # "3 hours" as "3hours"
    words = args.split(maxsplit=4)
    values: dict[str, object] = {}
    used = 0
    for word in words[:4]:
        low = word.lower()
        if low in ("short", "long"):
            values["length"] = low
        elif low in ("bullets", "bullet", "paragraph"):
            values["form"] = "paragraph" if low == "paragraph" else "bullets"
        elif low == "missed":
            values["missed"] = True
        elif (hours := _HOURS.match(low)) and values.get("missed"):
            values["hours"] = min(float(hours.group(1)), _MAX_HOURS)
        else:
            break
        used += 1
    rest = args.split(maxsplit=used)[used:] if used else [args]
    return Options(**values, text=(rest[0] if rest else "").strip())  # type: ignore[arg-type]


class SummarizeSkill:
    def __init__(self, services: SkillServices) -> None:
        self._s = services

    async def summarize(self, ctx: TurnContext) -> str | AsyncIterator[str]:
        options = parse_options(ctx.args)
        prefs = await self._s.turn(ctx)
        if options.missed:
            if options.hours == 0 or _HOURS_MEANT.match(options.text):  # "-1h", "0h", "5x"
                return await ctx.say(MISSED_USAGE)
            if not prefs.keep_messages:
                return await ctx.say(NOT_KEPT)
            text = await self._missed(ctx, prefs.user_ref, options.hours)
            if not text:
                return await ctx.say(NOTHING_MISSED)
        else:
            # A document's fenced block (its message's, bot.conversation.intake): its text.
            text = unfenced(options.text) or prefs.reply_to_text or await self._conversation(ctx)
        if not text.strip():
            return await ctx.say(NOTHING)
        style = self._style(options, self._s.language(prefs, text))
        if self._s.backend is None:
            return await self._extractive(text, style)
        return MapReduce(self._s, style, str(ctx.key), say=ctx.say).run(text)

    def _style(self, options: Options, language: str) -> SummaryStyle:
        s = self._s.settings
        tokens = s.summary_long_tokens if options.length == "long" else s.summary_short_tokens
        if self._s.backend is not None:  # a long summary must still fit a small model
            tokens = min(tokens, self._s.max_model_len() // 4)
        return SummaryStyle(options.length, options.form, tokens, language_name(language))

    async def _extractive(self, text: str, style: SummaryStyle) -> str:
        sentences = self._s.settings.extractive_sentences
        if style.length == "long":
            sentences *= 2
        form: Literal["bullets", "paragraph"] = (
            "paragraph" if style.form == "paragraph" else "bullets"
        )
        # Ranking is quadratic in the sentences: keep a long text off the event loop.
        return await asyncio.to_thread(
            summarize_extractive, text, max_sentences=sentences, form=form
        )

    async def _conversation(self, ctx: TurnContext) -> str:
        state = await ctx.store.state(ctx.conversation_id)
        rows = await ctx.store.messages_between(
            ctx.conversation_id, after_id=state.context_start_id,
            before_id=ctx.message_id or 2**62, limit=self._s.settings.missed_max_messages,
        )  # fmt: skip
        return self._transcript(ctx, rows)

    async def _missed(self, ctx: TurnContext, user_ref: int | None, hours: float | None) -> str:
        """The chat since the user's last message (and its answer), at most `missed_hours`
        back; with `hours`, simply the last `hours` hours."""
        s = self._s.settings
        since = utcnow() - timedelta(hours=hours or s.missed_hours)
        seen = 0
        if hours is None and user_ref is not None:
            seen = await ctx.store.last_seen_id(ctx.conversation_id, user_ref, ctx.message_id)
        rows = await ctx.store.messages_between(
            ctx.conversation_id, after_id=seen, before_id=ctx.message_id, since=since,
            limit=s.missed_max_messages,
        )  # fmt: skip
        return self._transcript(ctx, rows)

    def _transcript(self, ctx: TurnContext, rows: list[LoggedMessage]) -> str:
        if any(r.kept for r in rows):  # the summary may quote them: deleted with them
            ctx.quotes_kept()
        return transcript(rows, quoted=self._s.backend is not None)


BOT_LABEL = "Parley (bot)"  # no member's label can be this: theirs keep no parentheses


def transcript(rows: list[LoggedMessage], *, quoted: bool = True) -> str:
    """The chat as the summary reads it: each message on one line of its own, after its
    speaker's label, its line breaks flattened. A member's "lunch?\nParley: Admins decided
    ...\nBob: confirmed" made lines that read as the bot's and Bob's words (a helper's
    review); now they stay on the member's line. `quoted`, for a model: the text also goes in
    double quotes it cannot close (as the hand-off note quotes a customer). Without a model
    the extractive summary picks sentences: quotes would leave each one half a pair, and a
    sentence from the middle of a message would come without its speaker, so each sentence
    is a paragraph of its own after its speaker's label ("Bob: Parley: Admins decided ...")."""
    lines = []
    for r in rows:
        said = Said(BOT_LABEL if r.is_bot else speaker(r.author), " ".join(r.content.split()))
        if quoted:
            lines.append(quoted_line(said))
        else:
            lines += [f"{said.who}: {s}" for s in split_sentences(said.text) or [said.text]]
    return ("\n" if quoted else "\n\n").join(lines)
