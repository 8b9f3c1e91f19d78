"""Telegram adapter (python-telegram-bot 22.x, the `telegram` extra). See docs/telegram.md."""

from .adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
