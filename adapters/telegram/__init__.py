"""Telegram adapter (python-telegram-bot 22.x, the `telegram` extra). See docs/telegram.md.

The SDK is imported by `adapters.telegram.adapter` only; `spec` and `settings` import
without it."""
