"""Splitting long texts for a token budget, and planning the combine rounds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from backends.base import estimate_tokens
from bot.text.chunking import (
    CALIBRATION_CHARS,
    balanced_groups,
    part_budget,
    plan_map_reduce,
    split_for_budget,
)


async def whitespace_count(text: str) -> int:
    return len(text.split())


def words(text: str) -> int:
    return len(text.split())


async def estimated_count(text: str) -> int:
    return estimate_tokens(text)


def paragraph(index: int, words: int = 100) -> str:
    """A paragraph of exactly `words` words, in sentences of ten."""
    tokens = [f"w{index}x{i}" for i in range(words)]
    sentences = [" ".join(tokens[i : i + 10]) + "." for i in range(0, words, 10)]
    return " ".join(sentences)


FIFTY_K = "\n\n".join(paragraph(i) for i in range(500))
CODE = "```python\n" + "\n".join(f"value_{i} = compute({i})" for i in range(150)) + "\n```"


async def test_fifty_thousand_tokens_in_the_expected_parts() -> None:
    assert await whitespace_count(FIFTY_K) == 50_000
    parts = await split_for_budget(FIFTY_K, 4_000, whitespace_count)
    # 40 paragraphs of 100 tokens fit 4,000; 500 paragraphs need 13 parts.
    assert len(parts) == 13
    assert all(words(p) <= 4_000 for p in parts)
    assert "\n\n".join(parts) == FIFTY_K  # cut on paragraph boundaries, nothing lost


async def test_fifty_thousand_tokens_with_the_real_estimate() -> None:
    text = FIFTY_K
    total = estimate_tokens(text)
    parts = await split_for_budget(text, 2_048, estimated_count)
    assert all(estimate_tokens(p) <= 2_048 for p in parts)
    assert math.ceil(total / 2_048) <= len(parts) <= math.ceil(total / 2_048) + 1
    assert "\n\n".join(parts) == text


async def test_code_block_is_kept_whole() -> None:
    before = "\n\n".join(paragraph(i, 50) for i in range(6))
    after = "\n\n".join(paragraph(i, 50) for i in range(6, 12))
    text = f"{before}\n\n{CODE}\n\n{after}"
    parts = await split_for_budget(text, 500, whitespace_count)
    holding = [p for p in parts if "```" in p]
    assert len(holding) == 1 and CODE in holding[0]
    assert all(words(p) <= 500 for p in parts)


async def test_code_block_larger_than_the_budget_is_cut_on_lines() -> None:
    parts = await split_for_budget(CODE, 100, whitespace_count)
    assert len(parts) == 5  # 452 tokens in 3-token lines: 33 lines (99 tokens) a part
    assert all(words(p) <= 100 for p in parts)
    assert "\n".join(parts) == CODE


async def test_long_sentence_is_cut_on_words_and_a_long_word_on_characters() -> None:
    sentence = " ".join(f"word{i}" for i in range(25))
    parts = await split_for_budget(sentence, 10, whitespace_count)
    assert [len(p.split()) for p in parts] == [10, 10, 5]
    word = "x" * 1000
    parts = await split_for_budget(word, 100, estimated_count)
    assert "".join(parts) == word
    assert all(estimate_tokens(p) <= 100 for p in parts)


async def test_non_additive_tokenizer_is_verified() -> None:
    async def with_overhead(text: str) -> int:
        return len(text.split()) + 7  # as if every text gained special tokens

    parts = await split_for_budget(FIFTY_K[:20_000], 300, with_overhead)
    assert all(words(p) + 7 <= 300 for p in parts)


async def test_batch_counter_is_used_in_few_calls() -> None:
    calls: list[int] = []

    async def count_many(texts: Sequence[str]) -> list[int]:
        calls.append(len(texts))
        return [len(t.split()) for t in texts]

    parts = await split_for_budget(FIFTY_K, 4_000, whitespace_count, count_many=count_many)
    assert len(parts) == 13
    # The whole text once in chunks, the joiners (estimated), two rounds correcting the
    # estimates by the packed parts' real counts, the final parts: never one per paragraph.
    assert len(calls) == 4
    assert calls[0] == math.ceil(len(FIFTY_K) / CALIBRATION_CHARS)
    assert sum(calls) < 100  # counted one per paragraph, it was 500 + 13


async def test_a_long_document_is_counted_once_in_chunks_not_per_paragraph() -> None:
    """The issue's 377,000-character document of 6,500 short paragraphs: counted in about
    fifty requests (it was one per paragraph: 6,500 /tokenize requests)."""
    document = "\n\n".join(f"Line {i} of the report says little." for i in range(6_500))
    requests: list[str] = []

    async def tokenize(text: str) -> int:  # one request per text, as a server's /tokenize
        requests.append(text)
        return estimate_tokens(text)

    parts = await split_for_budget(document, 3_000, tokenize)
    assert "\n\n".join(parts) == document
    assert all(estimate_tokens(p) <= 3_000 for p in parts)
    assert len(parts) <= math.ceil(estimate_tokens(document) / 3_000) + 1
    assert len(requests) < 100


async def test_empty_text_and_bad_budget() -> None:
    assert await split_for_budget(" \n\n ", 10, whitespace_count) == []
    with pytest.raises(ValueError):
        await split_for_budget("text", 0, whitespace_count)


def test_plan_map_reduce() -> None:
    plan = plan_map_reduce(13, context_tokens=4_096, prompt_tokens=200, summary_tokens=300)
    assert plan.fan_in == 11  # (4096 - 200 - 300) // (300 + 4)
    assert plan.rounds == ((7, 6), (2,))
    assert plan.total_calls == 16
    single = plan_map_reduce(1, context_tokens=4_096, prompt_tokens=200, summary_tokens=300)
    assert single.rounds == () and single.total_calls == 1


def test_plan_many_parts_needs_several_rounds() -> None:
    plan = plan_map_reduce(100, context_tokens=2_048, prompt_tokens=100, summary_tokens=400)
    assert plan.fan_in == 3
    assert [sum(r) for r in plan.rounds] == [100, 34, 12, 4, 2]
    assert all(max(r) <= plan.fan_in for r in plan.rounds)


def test_plan_rejects_a_context_too_small() -> None:
    with pytest.raises(ValueError, match="too small"):
        plan_map_reduce(5, context_tokens=1_000, prompt_tokens=300, summary_tokens=400)
    with pytest.raises(ValueError, match="no room"):
        part_budget(context_tokens=500, prompt_tokens=300, summary_tokens=300)


def test_balanced_groups() -> None:
    assert [len(g) for g in balanced_groups(list(range(13)), 11)] == [7, 6]
    assert balanced_groups([1, 2, 3], 5) == [[1, 2, 3]]
    assert balanced_groups([], 3) == []
