"""Telegram's split: messages of at most 4096 UTF-16 units of Markdown (`adapters.kit.split`).

What a reader sees of a piece is never longer than its Markdown (`formatting`), so cutting
the Markdown within the limit keeps every rendered message within Telegram's limit too.
"""

from __future__ import annotations

from adapters.kit.split import split_text

from .formatting import utf16_len

MAX_MESSAGE = 4096

__all__ = ["MAX_MESSAGE", "split_message", "utf16_len"]


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    return split_text(text, limit, length=utf16_len)
