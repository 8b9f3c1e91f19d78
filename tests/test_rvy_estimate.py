"""The one token estimate where no tokenizer counts (backends.base.estimate_tokens): ~4
characters a token was 2-4 times too low for Chinese, Japanese, Korean and the other scripts
a tokenizer splits into about a token a character."""

from __future__ import annotations

import pytest

from backends.base import estimate_chat_tokens, estimate_tokens
from bot.knowledge.chunker import MAX_TOKENS, chunk_sections
from bot.knowledge.types import Section
from bot.types import ChatMessage, Role


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 1),
        ("abcdefgh", 2),  # ASCII: ~4 characters a token, as before
        ("The cache holds recent context.", 8),
        ("数据库保存历史", 7),  # Chinese: a token a character
        ("データベース", 6),  # kana
        ("데이터베이스", 6),  # Hangul
        ("डेटाबेस", 7),  # Devanagari, with its vowel signs
        ("ฐานข้อมูล", 9),  # Thai
        ("Привет, мир", 5),  # Cyrillic (2 bytes): ~2 letters a token
        ("👍🎉", 3),  # emoji (4 bytes): more than one each
        ("a\ud800b", 2),  # a lone surrogate (from a JSON body) is counted, not an error
    ],
)
def test_estimate_counts_by_script(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_a_chinese_chat_is_estimated_at_a_token_a_character() -> None:
    question = "请用一句话解释数据库为什么保存完整的对话历史" * 10
    estimate = estimate_chat_tokens([ChatMessage(Role.USER, question)])
    assert len(question) <= estimate <= len(question) + 4


def test_knowledge_chunks_of_chinese_text_fit_the_limit_by_the_same_estimate() -> None:
    """The chunker's default counter is this estimate: a chunk of Chinese held up to four
    times MAX_TOKENS of a real tokenizer's tokens."""
    sentence = "数据库保存每次对话的完整历史记录，缓存保存最近的上下文。"
    chunks = chunk_sections([Section("", sentence * 60)])
    assert len(chunks) > 1
    assert all(len(chunk.text) <= MAX_TOKENS for chunk in chunks)
    assert all(chunk.token_count == estimate_tokens(chunk.text) for chunk in chunks)
