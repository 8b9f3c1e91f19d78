"""A thinking model's reasoning written inline, as `<think> ... </think>` before its answer.

A server with a reasoning parser (vLLM's `--reasoning-parser`) sends a thinking model's
reasoning apart, as `reasoning_content`; one without (vLLM without the option, llama.cpp,
many OpenAI-compatible servers) leaves it in the content, where it was shown to the user and
stored as the answer. A reply that begins (after blanks) with `<think>` has everything up to
and including the matching `</think>` taken for reasoning here, as `reasoning_content` is:
not shown, not stored, counted to the reply's size limit. A `<think>` later in an answer is
text (an answer about such models quotes it). Reasoning that never ends is all reasoning:
the reply is then empty, as one whose model reasoned and never answered.

What is taken for the tag is what vLLM's reasoning parsers take (`deepseek_r1`, `qwen3`):
`<think>` and `</think>` exactly, as the models write them (one token each in their
vocabularies); and the pairs of the models that write other ones, as vLLM's parsers for them
take them: Magistral's `[THINK]` ... `[/THINK]` (`mistral`), Seed-OSS's `<seed:think>` ...
`</seed:think>` (`seed_oss`), Gemma 4's `<|channel>` ... `<channel|>` (`gemma4`; its
`thought` label inside is reasoning too). The reasoning ends at the close of the pair it
began with. (A server that drops special tokens from what it sends, vLLM's
`skip_special_tokens`, sends Gemma 4's reasoning with no tag: nothing here can tell it apart.)
Before it, blanks and a byte order mark (U+FEFF), which some servers and GGUF conversions
put at the start of a text, are allowed: both are invisible. `<THINK>` or
`<think type="x">` are no model's tag and stay text, as in vLLM: hiding them would hide an
answer that merely begins so. A second `<think>` block later in the same reply is text too,
as for vLLM's parsers (after the first `</think>` all is content): Qwen3's and DeepSeek's
interleaved thinking opens a new block only at the start of a new generation (after a tool
result), which is a new reply here.

Some chat templates write the `<think>` themselves, at the end of the generation prompt
(DeepSeek-R1 and its distillations, QwQ, Qwen3's -Thinking-2507 models): the reply then
begins inside the reasoning and only its `</think>` comes (`opened_by_template`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

OPEN = "<think>"
CLOSE = "</think>"
# Each tag that may begin a reply's reasoning, and the one that ends it.
PAIRS = {
    OPEN: CLOSE,
    "[THINK]": "[/THINK]",
    "<seed:think>": "</seed:think>",
    "<|channel>": "<channel|>",
}
# What may come before the <think> that begins a reply: blanks and byte order marks.
_LEAD = re.compile(r"^[\s\ufeff]+")


@dataclass(frozen=True, slots=True)
class Split:
    """What one delta of content turned out to be."""

    reasoning: int = 0  # characters of reasoning (tags included)
    answer: str = ""  # text of the answer, to show


class InlineThinking:
    """Content deltas split into reasoning and answer. A tag may come split over deltas
    (`<thi` then `nk>`): text that may be its beginning is held until the next delta says."""

    def __init__(self, *, opened: bool = False) -> None:
        """`opened`: the prompt ended in `<think>` (`opened_by_template`); the reply begins
        inside the reasoning."""
        self._held = ""
        # The blanks that began the reply, kept apart (not read again with each delta): a
        # model stuck writing newlines made each delta re-read all of them.
        self._lead: list[str] = []
        self._lead_chars = 0
        # "start", "thinking", "after" (blanks after </think>), "answer"
        self._state = "thinking" if opened else "start"
        self._close = CLOSE  # of the pair the reasoning began with
        # Opened by the template and no </think> yet: the text taken for reasoning, kept in
        # case the reply ends without one (`flush(finished=True)`).
        self._unclosed: list[str] | None = [] if opened else None

    @property
    def thinking(self) -> bool:
        """Inside reasoning that has not ended yet."""
        return self._state == "thinking"

    @property
    def undecided(self) -> int:
        """Characters held, neither reasoning nor answer yet (blanks that may lead to a
        `<think>`): they count to a reply's size limit as well."""
        return self._lead_chars + len(self._held)

    def feed(self, text: str) -> Split:
        if self._state == "answer":
            return Split(answer=text)
        pending, self._held = self._held + text, ""
        if self._state == "start":
            return self._start(pending)
        if self._state == "thinking":
            return self._think(pending)
        return self._after(pending)

    def flush(self, *, finished: bool = False) -> Split:
        """What was held, at the end of the reply: a start that never became a tag is the
        answer; reasoning that never ended stays reasoning. Except where the template opened
        the reasoning and the model `finished` its reply itself (finish reason "stop") with
        no `</think>` at all: a server's reasoning parser took the reasoning and its close out
        without sending any (a model that thought nothing), so all of it was the answer."""
        held, self._held = self._take_lead() + self._held, ""
        if self._state in ("start", "answer"):
            return Split(answer=held)
        if finished and self._state == "thinking" and self._unclosed is not None:
            taken, self._unclosed = "".join(self._unclosed), None
            return Split(answer=taken + held)
        return Split(reasoning=len(held))

    def _start(self, pending: str) -> Split:
        begun = _LEAD.sub("", pending, count=1)
        if blanks := pending[: len(pending) - len(begun)]:
            self._lead.append(blanks)
            self._lead_chars += len(blanks)
        if any(len(begun) < len(tag) and tag.startswith(begun) for tag in PAIRS):
            self._held = begun  # nothing yet, or "<thi": read again with what follows
            return Split()
        lead = self._take_lead()
        tag = next((tag for tag in PAIRS if begun.startswith(tag)), None)
        if tag is None:
            self._state = "answer"
            return Split(answer=lead + begun)
        self._state, self._close = "thinking", PAIRS[tag]
        return _plus(len(lead) + len(tag), self._think(begun[len(tag) :]))

    def _take_lead(self) -> str:
        lead = "".join(self._lead)
        self._lead, self._lead_chars = [], 0
        return lead

    def _think(self, text: str) -> Split:
        end = text.find(self._close)
        if end < 0:
            keep = _tail_that_may_begin(text, self._close)
            self._held = text[len(text) - keep :]
            if self._unclosed is not None:
                self._unclosed.append(text[: len(text) - keep])
            return Split(reasoning=len(text) - keep)
        self._state, self._unclosed = "after", None
        close = len(self._close)
        return _plus(end + close, self._after(text[end + close :]))

    def _after(self, text: str) -> Split:
        # The blanks a model writes between its reasoning and its answer are neither.
        answer = text.lstrip()
        if answer:
            self._state = "answer"
        return Split(reasoning=len(text) - len(answer), answer=answer)


def _plus(reasoning: int, split: Split) -> Split:
    return Split(reasoning + split.reasoning, split.answer)


def _tail_that_may_begin(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a beginning of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def opened_by_template(tokenizer: Any) -> bool:
    """Whether `tokenizer`'s chat template ends its generation prompt in `<think>`, so that
    a reply begins inside the reasoning. The template's own business: a template it cannot
    render a one-question chat with is taken not to."""
    chat = [{"role": "user", "content": "?"}]
    try:
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    except Exception:  # no template, or one that wants more than a question
        return False
    return isinstance(prompt, str) and prompt.rstrip().endswith(OPEN)
