"""Cutting a long text into parts that each fit a token budget.

The text is cut on the coarsest boundary that works: paragraphs (a fenced code block is one
paragraph), then sentences, then words, then characters for a single endless "word". A piece
is only cut when it alone exceeds the budget, so a code block stays whole unless it cannot
fit anywhere. Pieces are then packed greedily, keeping the whitespace that separated them.

Token counts come from an async function (the backend's tokenizer is a network or engine
call), so every level counts all its pieces in one batch. Tokenizers are not additive (two
texts may count differently joined than apart), so each packed part is counted again and
repacked tighter if it came out over budget.

A long text (more than CALIBRATE_OVER paragraphs) is counted once, in chunks of
CALIBRATION_CHARS characters: its pieces are then sized by that text's own tokens per
character (with a margin), and only the packed parts are counted for real. So a 377,000
character document costs about fifty counting requests, not one per paragraph.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from .patterns import FENCED_CODE
from .sentences import split_sentences

T = TypeVar("T")
Count = Callable[[str], Awaitable[int]]
CountMany = Callable[[Sequence[str]], Awaitable[list[int]]]

# Above this many paragraphs, pieces are sized from a calibration, not counted one by one.
CALIBRATE_OVER = 64
CALIBRATION_CHARS = 16_000
# Estimates err high by this much, so that few packed parts need repacking.
ESTIMATE_MARGIN = 1.0
# Rounds of correcting the estimates by the real counts of the parts they pack into.
REFINE_ROUNDS = 2

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    joiner: str  # the whitespace that preceded it in the source
    code: bool = False
    tokens: int = 0


async def split_for_budget(
    text: str, budget_tokens: int, count: Count, *, count_many: CountMany | None = None
) -> list[str]:
    """Parts of `text`, in order, each counting at most `budget_tokens` tokens.

    `count_many`, where given (a backend's batch `count_tokens`), replaces concurrent calls
    of `count`. Only a single character that alone exceeds the budget can come out over it.
    """
    if budget_tokens < 1:
        raise ValueError("budget_tokens must be at least 1")
    counter = count_many or _gathering(count)
    blocks = _blocks(text)
    sizer = await _calibrated(text, counter) if len(blocks) > CALIBRATE_OVER else counter
    units = await _fit(blocks, budget_tokens, sizer)
    if not units:
        return []
    costs = await _joiner_costs(units, sizer)
    if sizer is not counter:
        units = await _refined(units, budget_tokens, costs, counter)
    packed = await _pack_verified(units, budget_tokens, budget_tokens, costs, counter)
    return [_join(part) for part in packed]


async def _refined(
    units: list[_Piece], budget: int, costs: dict[str, int], counter: CountMany
) -> list[_Piece]:
    """Estimated pieces corrected by the real counts of the parts they pack into (each
    piece scaled by its part's real / estimated tokens), in REFINE_ROUNDS rounds: the parts
    then come out nearly as full as exact counts would make them."""
    for _ in range(REFINE_ROUNDS):
        parts = _pack(units, budget, costs)
        counts = await counter([_join(part) for part in parts])
        corrected: list[_Piece] = []
        for part, real in zip(parts, counts, strict=True):
            estimated = sum(u.tokens + costs[u.joiner] for u in part[1:]) + part[0].tokens
            factor = real / max(1, estimated)
            corrected += [replace(u, tokens=max(1, math.ceil(u.tokens * factor))) for u in part]
        units = corrected
    return units


async def _calibrated(text: str, counter: CountMany) -> CountMany:
    """An estimating counter for `text`'s pieces: the whole text counted once, in chunks,
    gives its tokens per character."""
    chunks = [text[i : i + CALIBRATION_CHARS] for i in range(0, len(text), CALIBRATION_CHARS)]
    per_char = sum(await counter(chunks)) / max(1, len(text)) * ESTIMATE_MARGIN

    async def estimate(texts: Sequence[str]) -> list[int]:
        return [math.ceil(len(t) * per_char) + 1 for t in texts]

    return estimate


def _gathering(count: Count) -> CountMany:
    async def many(texts: Sequence[str]) -> list[int]:
        return list(await asyncio.gather(*(count(t) for t in texts)))

    return many


def _blocks(text: str) -> list[_Piece]:
    """Paragraphs and fenced code blocks, each to be kept whole where it fits."""
    blocks: list[_Piece] = []
    cursor = 0
    for fence in FENCED_CODE.finditer(text):
        blocks += _paragraphs(text[cursor : fence.start()])
        blocks.append(_Piece(fence.group(0), "\n\n", code=True))
        cursor = fence.end()
    return blocks + _paragraphs(text[cursor:])


def _paragraphs(text: str) -> list[_Piece]:
    return [_Piece(p.strip(), "\n\n") for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


async def _fit(pieces: list[_Piece], budget: int, counter: CountMany) -> list[_Piece]:
    """The pieces with their token counts, each over-budget one cut into smaller ones."""
    counts = await counter([p.text for p in pieces])
    finer = {i: f for i, n in enumerate(counts) if n > budget and (f := _finer(pieces[i]))}
    cut = await asyncio.gather(*(_fit(f, budget, counter) for f in finer.values()))
    replaced = dict(zip(finer, cut, strict=True))
    fitted: list[_Piece] = []
    for i, (piece, tokens) in enumerate(zip(pieces, counts, strict=True)):
        fitted += replaced.get(i, [replace(piece, tokens=tokens)])
    return fitted


def _finer(piece: _Piece) -> list[_Piece]:
    """The piece cut on the next finer boundary; empty when it cannot be cut."""
    text = piece.text
    if piece.code and "\n" in text:
        return _located(text, text.split("\n"), piece.joiner)
    sentences = split_sentences(text)
    if len(sentences) > 1:
        return _located(text, sentences, piece.joiner)
    words = _WORD.findall(text)
    if len(words) > 1:
        return _located(text, words, piece.joiner)
    if len(text) > 1:
        half = len(text) // 2
        return [_Piece(text[:half], piece.joiner), _Piece(text[half:], "")]
    return []


def _located(text: str, parts: list[str], first_joiner: str) -> list[_Piece]:
    """Pieces for substrings of `text` in order, each with the whitespace before it."""
    pieces: list[_Piece] = []
    cursor = 0
    for part in parts:
        start = text.find(part, cursor)
        joiner = first_joiner if not pieces else text[cursor:start]
        pieces.append(_Piece(part, joiner))
        cursor = start + len(part)
    return pieces


async def _joiner_costs(units: list[_Piece], counter: CountMany) -> dict[str, int]:
    joiners = sorted({u.joiner for u in units})
    return dict(zip(joiners, await counter(joiners), strict=True))


async def _pack_verified(
    units: list[_Piece], limit: int, budget: int, costs: dict[str, int], counter: CountMany
) -> list[list[_Piece]]:
    """Greedy packing under `limit`; a part whose real count exceeds `budget` is repacked."""
    parts = _pack(units, limit, costs)
    counts = await counter([_join(part) for part in parts])
    result: list[list[_Piece]] = []
    for part, tokens in zip(parts, counts, strict=True):
        if tokens <= budget or len(part) == 1:
            result.append(part)
        else:
            tighter = max(0, limit - (tokens - budget))
            result += await _pack_verified(part, tighter, budget, costs, counter)
    return result


def _pack(units: list[_Piece], limit: int, costs: dict[str, int]) -> list[list[_Piece]]:
    parts: list[list[_Piece]] = []
    current: list[_Piece] = []
    used = 0
    for unit in units:
        cost = unit.tokens + (costs[unit.joiner] if current else 0)
        if current and used + cost > limit:
            parts.append(current)
            current, used = [], 0
            cost = unit.tokens
        current.append(unit)
        used += cost
    if current:
        parts.append(current)
    return parts


def _join(part: list[_Piece]) -> str:
    return (part[0].text + "".join(u.joiner + u.text for u in part[1:])).strip()


@dataclass(frozen=True, slots=True)
class MapReducePlan:
    """How a text in `n_parts` parts is summarised: map each part, then combine in rounds."""

    n_parts: int
    fan_in: int  # partial summaries combined by one call
    rounds: tuple[tuple[int, ...], ...]  # per combine round, the size of each group

    @property
    def total_calls(self) -> int:
        """Model calls in all: for the user's progress bar."""
        return self.n_parts + sum(len(groups) for groups in self.rounds)


def part_budget(*, context_tokens: int, prompt_tokens: int, summary_tokens: int) -> int:
    """Source tokens one map call can take: the context less the prompt and the answer."""
    budget = context_tokens - prompt_tokens - summary_tokens
    if budget < 1:
        raise ValueError(
            f"a context of {context_tokens} tokens leaves no room for text after a prompt of "
            f"{prompt_tokens} and a summary of {summary_tokens}"
        )
    return budget


def plan_map_reduce(
    n_parts: int,
    *,
    context_tokens: int,
    prompt_tokens: int,
    summary_tokens: int,
    separator_tokens: int = 4,
) -> MapReducePlan:
    """How many partial summaries (each at most `summary_tokens`) one combine call can take.

    The combine call's input is those summaries plus a separator each, its output another
    summary, and both must fit the context beside the prompt.
    """
    room = part_budget(
        context_tokens=context_tokens, prompt_tokens=prompt_tokens, summary_tokens=summary_tokens
    )
    fan_in = room // (summary_tokens + separator_tokens)
    if fan_in < 2 and n_parts > 1:
        raise ValueError("the context is too small to combine two partial summaries")
    rounds: list[tuple[int, ...]] = []
    remaining = n_parts
    while remaining > 1:
        sizes = tuple(len(g) for g in balanced_groups(range(remaining), fan_in))
        rounds.append(sizes)
        remaining = len(sizes)
    return MapReducePlan(n_parts, max(fan_in, 2), tuple(rounds))


def balanced_groups(items: Sequence[T], fan_in: int) -> list[list[T]]:
    """Items in the fewest groups of at most `fan_in`, sizes differing by at most one.

    Balanced rather than greedy so that no combine call gets a lone leftover summary.
    """
    if fan_in < 1:
        raise ValueError("fan_in must be at least 1")
    n_groups = -(-len(items) // fan_in)
    size, extra = divmod(len(items), n_groups) if n_groups else (0, 0)
    groups: list[list[T]] = []
    start = 0
    for g in range(n_groups):
        end = start + size + (1 if g < extra else 0)
        groups.append(list(items[start:end]))
        start = end
    return groups
