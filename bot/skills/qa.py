"""/ask: answers grounded in the knowledge base, with citations.

The top passages go into the user message, numbered and fenced as quoted material (a document
that says "ignore all previous instructions" is data, never an instruction: it is not in the
system message, and the template says so); the model cites them as [1], [2], and the reply
always ends with the list of sources (title and location), so a reader can check the answer
even when the model forgot to cite. When search finds nothing relevant the answer is a plain
"I don't know", without asking the model, which would otherwise invent one. Without a model,
the best passages themselves are the answer.

With `knowledge.rerank`, the served model first reorders the best `knowledge.rerank_candidates`
passages (bot.knowledge.rerank); with `knowledge.grounding = "strict"` its verdict that none
answers the question counts as "nothing found".

"Nothing found" is decided in one place, `QaSkill.lookup`, and reported as `Lookup.unanswered`;
`ask` then says I_DONT_KNOW and calls the `on_unanswered` hook given to `register` (the
handoff's "unanswered" trigger counts these), with the turn's context and the question.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from bot.knowledge import Passage
from bot.knowledge.rerank import rerank
from bot.phrases import N_
from bot.text import language_name
from bot.text.quoting import fence_for, unfenced

from .router import Command, CommandRouter, Intent, Say, TurnContext
from .services import TEMPLATE_MARGIN_TOKENS, SkillServices, stream_text

log = logging.getLogger(__name__)

I_DONT_KNOW = N_(
    "I don't know: I found nothing about that in the knowledge base. "
    "Try other words, or ask the operator to add a document that covers it."
)
USAGE = N_("Usage: /ask QUESTION, for example /ask how do I reset a conversation?")
NO_KB = N_("The knowledge base is not available, so I cannot look that up.")
QUESTION_TOO_LONG = N_(
    "Your question is too long for me to look it up together with the documents; "
    "please ask it in fewer words."
)
SOURCES = N_("Sources:")
NO_MODEL_QUOTE = N_("No language model is configured; this is what the knowledge base says:")
# Characters of each passage shown when there is no model to write an answer.
EXCERPT_CHARS = 700
# Between two passages in the prompt, and what that costs (a token or two; counted high).
_BETWEEN_PASSAGES = "\n\n"
PASSAGE_JOIN_TOKENS = 2
# A line of a passage's text that starts like a passage's header in the prompt ("[2] Terms >
# Refunds", "【2】", after any line break a tokenizer reads as one) would make what follows
# it read as passage 2, cited as [2], and the sources list would name another document for
# it. A backslash before its bracket (Markdown's escape) keeps the words.
_LINE_BREAK = r"\n\r\v\f\x1c-\x1e\x85\u2028\u2029"
_BLANKS = rf"[^\S{_LINE_BREAK}]*"
_NUMBERED = rf"[\[［【]{_BLANKS}\d+{_BLANKS}[\]］】]"
_HEADER_LIKE = re.compile(rf"(^|[{_LINE_BREAK}])({_BLANKS})(?={_NUMBERED})")
# "](" or "][": where a bracket closes a link's text (inline or by reference).
_LINK_JOIN = re.compile(r"\](?=[(\[])")
# Bidirectional embeddings, overrides and isolates: one in a document's title or heading (a
# file named `Refund\u202efdp.exe.md`) reversed the rest of its citation's line as shown.
_DIRECTION_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
# A citation the model writes (with the space before it, dropped with it): [2], [1, 3],
# [ 4 ], a range [1-3] or [1–3], and the CJK forms ［２］, 【1】, [1、2], ［１－３］, [1〜3]. \d is
# any script's decimal digit, which int() reads. Not a link's text: [1-3](https://...).
# Inside a character class (escaped "-"); not "~": Markdown's strike-through and fences.
_CITE_DASH = r"\-–－〜～"
_CITE_ITEM = rf"\d{{1,3}}(?:\s*[{_CITE_DASH}]\s*\d{{1,3}})?"
_CITE_SEP = r"\s*[,，、;]\s*"
_CITATION = re.compile(
    rf"( ?)[\[［【]\s*({_CITE_ITEM}(?:{_CITE_SEP}{_CITE_ITEM})*)\s*[\]］】](?![(\[])"
)
# The end of a text that may be a citation still arriving ("[", "[1", "[1, ", "[1-", "[1]"
# before what may be a link's "("), or the space before a citation (taken out with it). 64
# characters hold a citation of every passage (12 of them, full-width, spaced) whole, so a
# match starts within the last _CITATION_OPEN_MAX characters: searched there alone (a search
# of the whole text tries every position, and a run of backticks made that quadratic).
_CITATION_OPEN = re.compile(rf"(?: ?[\[［【][\d\s,，、;{_CITE_DASH}]{{0,64}}[\]］】]?| )$")
_CITATION_OPEN_MAX = 67
# Markdown as _CodeSpans reads it: line ends, runs of backticks or tildes, and the rest.
_MARKDOWN_TOKENS = re.compile(r"\n|`+|~+|[^\n`~]+")
_ASK = re.compile(
    r"^(?:please\s+)?(?:ask|search|check)\s+(?:the\s+)?(?:docs|documentation|knowledge\s*base)"
    r"\s*[:,]?\s*(?:about\s+|for\s+|whether\s+)?(.+)$",
    re.I | re.S,
)


# Told about each question the knowledge base had no answer for: (turn, question).
UnansweredHook = Callable[[TurnContext, str], Awaitable[None]]
# Backends whose servers take a JSON schema (as bot.skills.intents.STRUCTURED_BACKENDS).
RERANK_BACKENDS = frozenset({"vllm", "openai"})


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the knowledge base gave for a question: the passages to answer from, best
    first. `unanswered` is the one definition of "nothing found" (no passage survived
    search, the score floor, and in strict grounding the reranking model's verdict)."""

    passages: list[Passage]

    @property
    def unanswered(self) -> bool:
        return not self.passages


def register(
    router: CommandRouter, services: SkillServices, on_unanswered: UnansweredHook | None = None
) -> None:
    skill = QaSkill(services, on_unanswered)
    router.add(Command("ask", N_("answer from the knowledge base, with sources: /ask QUESTION"),
                       skill.ask))  # fmt: skip
    router.add_intent(
        Intent("ask", "a question to answer from the documentation / knowledge base",
               skill.ask, match_ask)
    )  # fmt: skip


def match_ask(text: str) -> str | None:
    found = _ASK.match(text.strip())
    return found.group(1).strip() if found else None


class QaSkill:
    def __init__(
        self, services: SkillServices, on_unanswered: UnansweredHook | None = None
    ) -> None:
        self._s = services
        self._on_unanswered = on_unanswered

    async def ask(self, ctx: TurnContext) -> str | AsyncIterator[str]:
        prefs = await self._s.turn(ctx)
        # A document's fenced block (its message's, bot.conversation.intake): its text.
        question = unfenced(ctx.args) or (prefs.reply_to_text or "")
        if not question.strip():
            return await ctx.say(USAGE)
        if self._s.kb is None:
            return await ctx.say(NO_KB)
        found = await self.lookup(question, ctx.collection, str(ctx.key))
        if found.unanswered:
            await self._tell_unanswered(ctx, question)
            return await ctx.say(I_DONT_KNOW)
        passages = found.passages
        if self._s.backend is None:
            return quoted(passages, await ctx.say(NO_MODEL_QUOTE))
        language = self._s.language(prefs, question)
        return self._answer(question, passages, language, str(ctx.key), ctx.say)

    async def lookup(self, question: str, collection: str = "", session: str = "") -> Lookup:
        """The passages to answer `question` from (see Lookup)."""
        assert self._s.kb is not None
        policy = self._s.kb.policy
        wanted = self._s.settings.qa_passages
        reranking = policy.rerank and self._can_rerank()
        k = max(wanted, policy.rerank_candidates) if reranking else wanted
        found = await self._s.kb.search(question, k, collection=collection)
        found = [p for p in found if p.score > self._s.settings.qa_min_score]
        if reranking and found:
            assert self._s.backend is not None
            ranked = await rerank(self._s.backend, question, found, session_id=session or None)
            if ranked.judged and (ranked.passages or policy.strict):
                found = ranked.passages
        return Lookup(found[:wanted])

    async def relevant(self, question: str, collection: str = "") -> list[Passage]:
        return (await self.lookup(question, collection)).passages

    async def _tell_unanswered(self, ctx: TurnContext, question: str) -> None:
        """The hook's failure is logged (without the question) and never stops the reply."""
        if self._on_unanswered is None:
            return
        try:
            await self._on_unanswered(ctx, question)
        except Exception as exc:  # the user still gets I_DONT_KNOW
            log.warning("conversation %s: unanswered hook failed: %s", ctx.key, type(exc).__name__)

    def _can_rerank(self) -> bool:
        backend = self._s.backend
        return backend is not None and backend.capabilities.name in RERANK_BACKENDS

    async def _answer(
        self, question: str, passages: list[Passage], language: str, session: str, say: Say
    ) -> AsyncIterator[str]:
        assert self._s.backend is not None
        # The language's English name: a model follows "Answer in German" better than "de".
        system = self._s.prompts.render("qa", language=language_name(language))
        kept = await self._fit(system, question, passages)
        if not kept:  # the question leaves no room for a passage: an answer would be a guess
            yield await say(QUESTION_TOO_LONG)
            return
        request = self._s.request(
            system, passages_block(kept), question=question,
            max_tokens=self._s.generation.max_tokens, session_id=session,
        )  # fmt: skip
        deltas = stream_text(self._s.backend, request, mark_cut=True)
        answer = only_given_citations(deltas, len(kept))
        async with aclosing(answer):  # closing the answer aborts the request
            async for delta in answer:
                yield delta
        yield "\n\n" + sources(kept, await say(SOURCES))

    async def _fit(self, system: str, question: str, passages: list[Passage]) -> list[Passage]:
        """The best passages that fit the model's context beside the system message, the
        question and the answer; the best one is cut to fit if it alone is too long. Each
        passage is counted as the model sees it (number, citation, text), and the fence
        around them twice (a passage's run of 600 backticks makes it long: a helper's review)."""
        rendered = _rendered(passages)
        fence = fence_for(_BETWEEN_PASSAGES.join(rendered))  # the longest it can be
        system_tokens, question_tokens, fence_tokens, *counts = await self._s.count_many(
            [system, question, fence, *rendered]
        )
        room = (
            self._s.max_model_len()
            - self._s.generation.max_tokens
            - system_tokens
            - question_tokens
            - 2 * fence_tokens
            - TEMPLATE_MARGIN_TOKENS * 3
        )
        kept: list[Passage] = []
        for passage, text, tokens in zip(passages, rendered, counts, strict=True):
            if tokens > room:
                if not kept and room > 0:  # its share of characters, less its citation's
                    keep = int(len(text) * room / tokens) - (len(text) - len(passage.text))
                    kept.append(_with_text(passage, passage.text[: max(0, keep)]))
                break
            kept.append(passage)
            room -= tokens + PASSAGE_JOIN_TOKENS
        return kept


def passages_block(passages: list[Passage]) -> str:
    """The passages as the model sees them (inside the fence): number, citation, text."""
    return _BETWEEN_PASSAGES.join(_rendered(passages))


def _rendered(passages: list[Passage]) -> list[str]:
    """Each passage as `passages_block` writes it (its text may hold blank lines itself, never
    a line that reads as another passage's header)."""
    return [f"[{n}] {p.citation}\n{_not_a_header(p.text)}" for n, p in enumerate(passages, 1)]


def _not_a_header(text: str) -> str:
    return _HEADER_LIKE.sub(r"\1\2\\", text)


async def only_given_citations(
    deltas: AsyncGenerator[str, None], given: int
) -> AsyncGenerator[str, None]:
    """The model's text with citations of passages it was not given taken out: [4] after
    three passages (a number copied from a passage's text, or made up) would point the reader
    to a source that is not listed. [1, 4] keeps [1]. Code is left as written (`items[5]`,
    a list literal in a fenced block). A citation or a run of backticks split across deltas
    is held back until it is complete (a few characters)."""
    code = _CodeSpans()

    def valid(match: re.Match[str]) -> str:
        spans = [_cited_span(item) for item in re.split(_CITE_SEP, match[2])]
        if all(1 <= low <= high <= given for low, high in spans):
            return match[0]
        # Only the given passages, in order, each once (a range is cut to them first).
        numbers = (range(max(low, 1), min(high, given) + 1) for low, high in spans)
        kept = dict.fromkeys(str(n) for each in numbers for n in each)
        return f"{match[1]}[{', '.join(kept)}]" if kept else ""

    def checked(prose: str) -> str:
        return _CITATION.sub(valid, prose)

    held: list[str] = []  # what may still grow; a run of backticks or tildes in its pieces
    async with aclosing(deltas):
        async for delta in deltas:
            if held and delta and held[-1][-1] in "`~" and not delta.strip(held[-1][-1]):
                held.append(delta)  # the run goes on (joined once, when it ends)
                continue
            text = "".join(held) + delta
            cut = _still_arriving(text)
            held = [text[cut:]] if cut < len(text) else []
            if cut:
                yield code.outside(text[:cut], checked)
    if held:
        yield code.outside("".join(held), checked)


def _still_arriving(text: str) -> int:
    """Where the end of `text` that may still grow begins (len(text): nothing may): a run of
    backticks or tildes (a longer one may be a fence, or close another span), or what
    _CITATION_OPEN reads. Linear in the run, whatever its length."""
    for mark in "`~":
        if text.endswith(mark):
            return len(text.rstrip(mark))
    growing = _CITATION_OPEN.search(text, max(0, len(text) - _CITATION_OPEN_MAX))
    return growing.start() if growing else len(text)


def _cited_span(item: str) -> tuple[int, int]:
    """(first, last) passage of one cited item: "4" is (4, 4), "1-3" is (1, 3)."""
    ends = re.split(rf"\s*[{_CITE_DASH}]\s*", item.strip())
    return int(ends[0]), int(ends[-1])


class _CodeSpans:
    """Where a streamed Markdown text is code, as CommonMark reads it: a fence (three or more
    backticks or tildes at a line's start) to a closing one of the same character at least as
    long, a line indented four spaces or a tab, an inline span to the next run of as many
    backticks. What is not code is prose, where citations are."""

    def __init__(self) -> None:
        self._fence: tuple[str, int] | None = None  # the opening run's character and length
        self._inline = 0  # the opening run's length; 0: not in an inline span
        self._line_start = True  # nothing but blanks so far on this line
        self._indent = 0  # columns of those blanks
        self._indented = False  # this line is indented code

    def outside(self, text: str, change: Callable[[str], str]) -> str:
        """`text` with `change` applied to what is not code."""
        out: list[str] = []
        for token in _MARKDOWN_TOKENS.findall(text):
            if token == "\n":
                self._line_start, self._indent, self._indented = True, 0, False
                out.append(token)
            elif token[0] in "`~" and len(token) >= 3 and self._opens_fence(token):
                out.append(token)
            elif token[0] == "`":
                if self._fence is None and not self._indented:
                    self._inline = 0 if self._inline == len(token) else self._inline or len(token)
                self._line_start = False
                out.append(token)
            else:
                out.append(self._prose(token, change))
        return "".join(out)

    def _opens_fence(self, run: str) -> bool:
        """A run of 3+ backticks or tildes: opens or closes a fence if it starts a line."""
        if not self._line_start or self._indent >= 4 or self._inline:
            return False
        if self._fence is None:
            self._fence = (run[0], len(run))
        elif run[0] == self._fence[0] and len(run) >= self._fence[1]:
            self._fence = None
        else:
            return False
        self._line_start = False
        return True

    def _prose(self, text: str, change: Callable[[str], str]) -> str:
        if self._line_start:
            blanks = len(text) - len(text.lstrip(" \t"))
            self._indent += sum(4 if c == "\t" else 1 for c in text[:blanks])
            if blanks < len(text):
                self._line_start = False
                self._indented = self._indent >= 4 and self._fence is None
        if self._fence is not None or self._inline or self._indented:
            return text
        return change(text)


def sources(passages: list[Passage], heading: str) -> str:
    """The list of sources under `heading` (SOURCES, said in the user's language)."""
    lines = [heading] + [f"[{n}] {_plain(p.citation)}" for n, p in enumerate(passages, 1)]
    return "\n".join(lines)


def _plain(citation: str) -> str:
    """A citation as literal text in the reply, which platforms render as Markdown: a
    document's title written `[Reset your password](https://example.net)` would otherwise
    show as a link whose address the reader does not see. A space after the bracket keeps
    the words and the address as written, with no escapes for plain-text readers to see.
    Direction overrides and embeddings are dropped (see _DIRECTION_CONTROLS)."""
    return _LINK_JOIN.sub("] ", _DIRECTION_CONTROLS.sub("", citation))


def quoted(passages: list[Passage], heading: str) -> str:
    """The no-model answer: `heading` (NO_MODEL_QUOTE, said in the user's language), then the
    best passages as they are, each under its citation."""
    blocks = [heading]
    for n, passage in enumerate(passages, 1):
        text = " ".join(passage.text.split())
        if len(text) > EXCERPT_CHARS:
            text = text[: EXCERPT_CHARS - 1] + "…"
        blocks.append(f"[{n}] {_plain(passage.citation)}\n{text}")
    return "\n\n".join(blocks)


def _with_text(passage: Passage, text: str) -> Passage:
    return Passage(text, passage.title, passage.location, passage.source, passage.score)
